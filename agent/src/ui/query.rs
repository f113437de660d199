//! The page's query strings: `key=value&...`, percent-encoded.

use crate::api::Filter;

pub struct Query(Vec<(String, String)>);

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(hi), Some(lo)) => {
                    out.push(hi << 4 | lo);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl Query {
    pub fn parse(raw: &str) -> Query {
        Query(
            raw.split('&')
                .filter(|p| !p.is_empty())
                .map(|p| {
                    let (k, v) = p.split_once('=').unwrap_or((p, ""));
                    (decode(k), decode(v))
                })
                .collect(),
        )
    }

    /// The first non-empty value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.iter().find(|(k, v)| k == key && !v.is_empty()).map(|(_, v)| v.as_str())
    }

    /// Every value of `key`, commas splitting values too.
    pub fn list(&self, key: &str) -> Vec<String> {
        self.0
            .iter()
            .filter(|(k, _)| k == key)
            .flat_map(|(_, v)| v.split(','))
            .filter(|v| !v.is_empty())
            .map(String::from)
            .collect()
    }

    pub fn num<T: std::str::FromStr>(&self, key: &str) -> Option<T> {
        self.get(key).and_then(|v| v.parse().ok())
    }

    /// `palisade observe`'s filters, named as its flags are.
    pub fn filter(&self) -> Result<Filter, String> {
        let word = |key: &str, upper: bool| {
            self.get(key).map(|v| serde_json::Value::String(if upper { v.to_uppercase() } else { v.to_lowercase() }))
        };
        let verdict = word("verdict", true)
            .map(|v| serde_json::from_value(v).map_err(|_| "verdict: allowed, dropped or audit".to_string()))
            .transpose()?;
        let direction = word("direction", false)
            .map(|v| serde_json::from_value(v).map_err(|_| "direction: ingress or egress".to_string()))
            .transpose()?;
        let port = match self.get("port") {
            Some(p) => Some(p.parse::<u16>().map_err(|_| format!("port: {p} is not a port number"))?),
            None => None,
        };
        Ok(Filter {
            namespace: self.get("namespace").map(String::from),
            pod: self.get("pod").map(String::from),
            verdict,
            direction,
            protocol: self.get("protocol").map(String::from),
            port,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::Verdict;
    use crate::policy::Direction;

    #[test]
    fn parses_lists_and_percent_encoding() {
        let q = Query::parse("namespace=x%2Cy&namespace=z&pod=x%2Fa&empty=&id=a+b%7Cc&bad=%zz&end=%4");
        assert_eq!(q.list("namespace"), ["x", "y", "z"]);
        assert_eq!(q.get("pod"), Some("x/a"));
        assert_eq!(q.get("empty"), None);
        assert_eq!(q.get("id"), Some("a b|c"));
        assert_eq!(q.get("bad"), Some("%zz"));
        assert_eq!(q.get("end"), Some("%4"));
    }

    #[test]
    fn observe_filters() {
        let f = Query::parse("verdict=dropped&direction=Ingress&protocol=tcp&port=80").filter().unwrap();
        assert_eq!((f.verdict, f.direction, f.port), (Some(Verdict::Dropped), Some(Direction::Ingress), Some(80)));
        assert!(Query::parse("verdict=maybe").filter().is_err());
        assert!(Query::parse("port=http").filter().is_err());
    }
}

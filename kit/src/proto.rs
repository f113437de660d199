//! The transport protocols NetworkPolicy ports name.

use std::fmt;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Proto {
    Tcp,
    Udp,
    Sctp,
}

impl Proto {
    pub const ALL: [Proto; 3] = [Proto::Tcp, Proto::Udp, Proto::Sctp];

    /// As manifests spell it (`protocol: TCP`).
    pub fn name(self) -> &'static str {
        match self {
            Proto::Tcp => "TCP",
            Proto::Udp => "UDP",
            Proto::Sctp => "SCTP",
        }
    }

    /// As command lines spell it (`agnhost connect --protocol=tcp`).
    pub fn lower(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
            Proto::Sctp => "sctp",
        }
    }

    /// The IP protocol number.
    pub fn number(self) -> u8 {
        match self {
            Proto::Tcp => 6,
            Proto::Udp => 17,
            Proto::Sctp => 132,
        }
    }
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Proto {
    type Err = String;

    fn from_str(s: &str) -> Result<Proto, String> {
        Proto::ALL.into_iter().find(|p| p.name().eq_ignore_ascii_case(s)).ok_or_else(|| format!("no protocol {s}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spellings_round_trip() {
        for p in Proto::ALL {
            assert_eq!(p.to_string().parse::<Proto>(), Ok(p));
            assert_eq!(p.lower().parse::<Proto>(), Ok(p));
        }
        assert_eq!((Proto::Tcp.number(), Proto::Udp.number(), Proto::Sctp.number()), (6, 17, 132));
        assert!("icmp".parse::<Proto>().is_err());
    }
}

//! One case per finding, each with the state that triggers it and the one
//! that does not, on a small shop: shop/frontend, shop/api (serving `http`
//! on 8080) and kube-system/coredns.

use super::{Finding, Severity, lint};
use crate::cluster::Snapshot;
use crate::cluster::convert::manifests_to_input;

fn pod(ns: &str, name: &str, labels: &str, ip: &str, extra: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {ns}, labels: {{{labels}}}}}\nspec: {{nodeName: n1, containers: [{{name: c, ports: [{{name: http, containerPort: 8080}}, {{name: dns, containerPort: 53, protocol: UDP}}]}}]{extra}}}\nstatus: {{phase: Running, podIP: {ip}}}\n---\n"
    )
}

fn np(ns: &str, name: &str, spec: &str) -> String {
    format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n{spec}---\n"
    )
}

fn shop() -> String {
    let mut s = String::new();
    for ns in ["shop", "kube-system"] {
        s.push_str(&format!("apiVersion: v1\nkind: Namespace\nmetadata: {{name: {ns}}}\n---\n"));
    }
    s.push_str(&pod("shop", "frontend", "app: frontend", "10.0.0.10", ""));
    s.push_str(&pod("shop", "api", "app: api", "10.0.0.20", ""));
    s.push_str(&pod("kube-system", "coredns", "k8s-app: kube-dns", "10.0.0.53", ""));
    s
}

const DENY_ALL: &str = "  podSelector: {}\n  policyTypes: [Ingress, Egress]\n";
/// The guide's DNS allow.
const ALLOW_DNS: &str = "  podSelector: {}\n  policyTypes: [Egress]\n  egress:\n  - to:\n    - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: kube-system}}\n      podSelector: {matchLabels: {k8s-app: kube-dns}}\n    ports: [{protocol: UDP, port: 53}, {protocol: TCP, port: 53}]\n";

fn run(manifests: &str) -> Vec<Finding> {
    let input = manifests_to_input(manifests).unwrap_or_else(|e| panic!("{e:?}"));
    lint(&Snapshot { input, errors: vec![] }).findings
}

/// The findings of one check.
fn of(findings: &[Finding], check: &str) -> Vec<Finding> {
    findings.iter().filter(|f| f.check == check).cloned().collect()
}

#[test]
fn egress_isolated_pods_without_dns_are_errors() {
    let f = run(&(shop() + &np("shop", "deny-all", DENY_ALL)));
    let dns = of(&f, "dns");
    assert_eq!(dns.len(), 2, "{dns:#?}");
    assert!(dns.iter().all(|d| d.severity == Severity::Error), "{dns:#?}");
    assert_eq!(dns[0].object, "Pod shop/api");
    assert!(dns[0].message.contains("kube-system/coredns"), "{dns:#?}");

    let f = run(&(shop() + &np("shop", "deny-all", DENY_ALL) + &np("shop", "allow-dns", ALLOW_DNS)));
    assert_eq!(of(&f, "dns"), []);
    // Not isolated for egress: nothing to say.
    assert_eq!(of(&run(&shop()), "dns"), []);
}

#[test]
fn dns_over_udp_only_is_a_warning_and_a_closed_server_an_error() {
    let udp_only = ALLOW_DNS.replace(", {protocol: TCP, port: 53}", "");
    let f = run(&(shop() + &np("shop", "deny-all", DENY_ALL) + &np("shop", "allow-dns", &udp_only)));
    let dns = of(&f, "dns");
    assert_eq!(dns.len(), 2, "{dns:#?}");
    assert!(dns.iter().all(|d| d.severity == Severity::Warning && d.message.contains("not over TCP")), "{dns:#?}");

    // kube-system isolates CoreDNS and admits nothing: every pod loses DNS.
    let f = run(&(shop() + &np("kube-system", "deny-ingress", "  podSelector: {}\n  policyTypes: [Ingress]\n")));
    let dns = of(&f, "dns");
    assert_eq!(dns.len(), 2, "{dns:#?}");
    assert!(dns.iter().all(|d| d.severity == Severity::Error && d.message.contains("admits")), "{dns:#?}");
}

#[test]
fn without_a_known_dns_server_a_pod_that_may_send_port_53_nowhere_is_info() {
    let no_dns = shop().replace("k8s-app: kube-dns", "app: coredns");
    let deny = np("shop", "deny-egress", "  podSelector: {}\n  policyTypes: [Egress]\n");
    let dns = of(&run(&(no_dns.clone() + &deny)), "dns");
    assert_eq!(dns.len(), 2, "{dns:#?}");
    assert!(dns.iter().all(|d| d.severity == Severity::Info), "{dns:#?}");
    // Port 53 to some address outside the cluster: fine.
    let resolver = np(
        "shop",
        "resolver",
        "  podSelector: {}\n  policyTypes: [Egress]\n  egress:\n  - to: [{ipBlock: {cidr: 192.0.2.53/32}}]\n    ports: [{protocol: UDP, port: 53}]\n",
    );
    assert_eq!(of(&run(&(no_dns + &deny + &resolver)), "dns"), []);
}

#[test]
fn selectors_that_select_nothing() {
    let by_team = np(
        "shop",
        "from-ops",
        "  podSelector: {matchLabels: {app: api}}\n  ingress:\n  - from: [{namespaceSelector: {matchLabels: {team: ops}}}]\n",
    );
    let f = of(&run(&(shop() + &by_team)), "selects-nothing");
    assert_eq!(f.len(), 1, "{f:#?}");
    assert_eq!(f[0].field, "spec.ingress[0].from[0].namespaceSelector");
    assert!(f[0].message.contains("no namespace has the label team"), "{f:#?}");
    let by_name = by_team.replace("team: ops", "kubernetes.io/metadata.name: kube-system");
    assert_eq!(of(&run(&(shop() + &by_name)), "selects-nothing"), []);

    let typo = np(
        "shop",
        "api",
        "  podSelector: {matchLabels: {app: apii}}\n  ingress:\n  - from: [{podSelector: {matchLabels: {app: frontend}}}, {podSelector: {matchLabels: {app: fronted}}}]\n",
    );
    let f = of(&run(&(shop() + &typo)), "selects-nothing");
    let fields: Vec<&str> = f.iter().map(|f| f.field.as_str()).collect();
    assert_eq!(fields, ["spec.ingress[0].from[1].podSelector", "spec.podSelector"]);
    assert_eq!(
        of(&run(&(shop() + &typo.replace("apii", "api").replace("fronted", "frontend"))), "selects-nothing"),
        []
    );
}

#[test]
fn policies_selecting_host_network_pods() {
    let node_agent = pod("shop", "agent", "app: agent", "192.168.1.10", ", hostNetwork: true");
    let isolate = |app: &str| {
        np("shop", "iso", &format!("  podSelector: {{matchLabels: {{app: {app}}}}}\n  policyTypes: [Ingress]\n"))
    };
    let f = of(&run(&(shop() + &node_agent + &isolate("agent"))), "host-network");
    assert_eq!(f.len(), 1, "{f:#?}");
    assert_eq!((f[0].severity, f[0].field.as_str()), (Severity::Warning, "spec.podSelector"));
    assert_eq!(of(&run(&(shop() + &node_agent + &isolate("api"))), "host-network"), []);
    // As a peer, its traffic carries the node's address.
    let from_agent = np(
        "shop",
        "from-agent",
        "  podSelector: {matchLabels: {app: api}}\n  ingress:\n  - from: [{podSelector: {matchLabels: {app: agent}}}]\n",
    );
    let f = of(&run(&(shop() + &node_agent + &from_agent)), "host-network");
    assert_eq!(f.len(), 1, "{f:#?}");
    assert_eq!(f[0].field, "spec.ingress[0].from[0]");
}

#[test]
fn isolated_service_backends_that_admit_no_client() {
    let svc = "apiVersion: v1\nkind: Service\nmetadata: {name: api, namespace: shop}\nspec: {clusterIP: 10.96.0.20, selector: {app: api}, ports: [{port: 80, targetPort: http}]}\n---\n";
    let closed = np("shop", "api", "  podSelector: {matchLabels: {app: api}}\n  policyTypes: [Ingress]\n");
    let f = of(&run(&(shop() + svc + &closed)), "service-unreachable");
    assert_eq!(f.len(), 1, "{f:#?}");
    assert_eq!((f[0].object.as_str(), f[0].field.as_str()), ("Service shop/api", "spec.ports[0]"));
    // Open on another port only: still nothing reaches 8080.
    let metrics =
        np("shop", "api", "  podSelector: {matchLabels: {app: api}}\n  ingress:\n  - ports: [{port: 9090}]\n");
    assert_eq!(of(&run(&(shop() + svc + &metrics)), "service-unreachable").len(), 1);
    // Admits the frontend, or an address range outside the cluster: fine.
    let from_frontend = np(
        "shop",
        "api",
        "  podSelector: {matchLabels: {app: api}}\n  ingress:\n  - from: [{podSelector: {matchLabels: {app: frontend}}}]\n",
    );
    assert_eq!(of(&run(&(shop() + svc + &from_frontend)), "service-unreachable"), []);
    let from_lb = np(
        "shop",
        "api",
        "  podSelector: {matchLabels: {app: api}}\n  ingress:\n  - from: [{ipBlock: {cidr: 198.51.100.0/24}}]\n    ports: [{port: 8080}]\n",
    );
    assert_eq!(of(&run(&(shop() + svc + &from_lb)), "service-unreachable"), []);
}

#[test]
fn named_ports_no_destination_declares() {
    let named = |port: &str| {
        np(
            "shop",
            "api",
            &format!("  podSelector: {{matchLabels: {{app: api}}}}\n  ingress:\n  - ports: [{{port: {port}}}]\n"),
        )
    };
    let f = of(&run(&(shop() + &named("htpp"))), "named-port");
    assert_eq!(f.len(), 1, "{f:#?}");
    assert_eq!(f[0].field, "spec.ingress[0].ports[0].port");
    assert_eq!(of(&run(&(shop() + &named("http"))), "named-port"), []);
    // The name with the wrong protocol.
    let f = of(&run(&(shop() + &named("dns, protocol: TCP"))), "named-port");
    assert!(f.len() == 1 && f[0].message.contains("declared for UDP"), "{f:#?}");
    // Egress: the destinations are the rule's peers.
    let egress = |app: &str| {
        np(
            "shop",
            "out",
            &format!(
                "  podSelector: {{matchLabels: {{app: frontend}}}}\n  policyTypes: [Egress]\n  egress:\n  - to: [{{namespaceSelector: {{}}, podSelector: {{matchLabels: {{{app}}}}}}}]\n    ports: [{{port: dns, protocol: UDP}}]\n"
            ),
        )
    };
    assert_eq!(of(&run(&(shop() + &egress("k8s-app: kube-dns"))), "named-port"), []);
    let no_dns_port = shop().replace(
        "k8s-app: kube-dns}}\nspec: {nodeName: n1, containers: [{name: c, ports: [{name: http, containerPort: 8080}, {name: dns, containerPort: 53, protocol: UDP}]}]",
        "k8s-app: kube-dns}}\nspec: {nodeName: n1, containers: [{name: c}]",
    );
    assert_ne!(no_dns_port, shop());
    assert_eq!(of(&run(&(no_dns_port + &egress("k8s-app: kube-dns"))), "named-port").len(), 1);
}

#[test]
fn ip_blocks_that_contain_pod_addresses() {
    let block = |cidr: &str| {
        np(
            "shop",
            "office",
            &format!(
                "  podSelector: {{matchLabels: {{app: api}}}}\n  ingress:\n  - from: [{{ipBlock: {{cidr: {cidr}}}}}]\n"
            ),
        )
    };
    let f = of(&run(&(shop() + &block("10.0.0.0/8"))), "ip-block-pods");
    assert_eq!(f.len(), 1, "{f:#?}");
    assert_eq!(f[0].field, "spec.ingress[0].from[0].ipBlock");
    assert!(f[0].message.contains("3 pods"), "{f:#?}");
    assert_eq!(of(&run(&(shop() + &block("203.0.113.0/24"))), "ip-block-pods"), []);
    assert_eq!(of(&run(&(shop() + &block("0.0.0.0/0"))), "ip-block-pods"), []);
    assert_eq!(of(&run(&(shop() + &block("10.0.0.0/8, except: [10.0.0.0/24]"))), "ip-block-pods"), []);
}

#[test]
fn pods_that_can_reach_the_metadata_address() {
    let f = of(&run(&shop()), "metadata");
    let objects: Vec<(&str, Severity)> = f.iter().map(|f| (f.object.as_str(), f.severity)).collect();
    assert_eq!(objects, [("Namespace kube-system", Severity::Info), ("Namespace shop", Severity::Info)]);
    assert!(f[1].message.contains("frontend") && f[1].message.contains("api"), "{f:#?}");
    let block = np(
        "shop",
        "no-metadata",
        "  podSelector: {}\n  policyTypes: [Egress]\n  egress:\n  - to: [{ipBlock: {cidr: 0.0.0.0/0, except: [169.254.169.254/32]}}]\n",
    );
    let f = of(&run(&(shop() + &block)), "metadata");
    assert_eq!(f.iter().map(|f| f.object.as_str()).collect::<Vec<_>>(), ["Namespace kube-system"]);
}

#[test]
fn a_yaml_boolean_where_a_string_belongs_is_an_error_naming_the_field() {
    let dir = std::env::temp_dir().join(format!("palisade-lint-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let policy = |v: &str| {
        np(
            "shop",
            "api",
            &format!("  podSelector: {{matchLabels: {{app: api, canary: {v}}}}}\n  policyTypes: [Ingress]\n"),
        )
    };
    let lint_file = |text: &str| {
        std::fs::write(dir.join("shop.yaml"), shop() + text).unwrap();
        let snap = crate::cluster::files::FileSource::new(&dir).load();
        lint(&snap).findings
    };
    let f = of(&lint_file(&policy("no")), "invalid");
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(f.len(), 1, "{f:#?}");
    assert_eq!((f[0].severity, f[0].object.as_str()), (Severity::Error, "NetworkPolicy shop/api"));
    assert!(f[0].field.starts_with("spec.podSelector.matchLabels"), "{f:#?}");
    assert!(f[0].message.contains("quote"), "{f:#?}");
    assert!(f[0].source.ends_with("shop.yaml"), "{f:#?}");
    std::fs::create_dir_all(&dir).unwrap();
    let f = of(&lint_file(&policy("\"no\"")), "invalid");
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(f, []);
}

#[test]
fn the_same_state_gives_the_same_report_sorted_by_severity() {
    let state = shop()
        + &np("shop", "deny-all", DENY_ALL)
        + &np("shop", "office", "  podSelector: {}\n  ingress:\n  - from: [{ipBlock: {cidr: 10.0.0.0/8}}]\n");
    let a = run(&state);
    assert_eq!(a, run(&state));
    let severities: Vec<Severity> = a.iter().map(|f| f.severity).collect();
    let mut sorted = severities.clone();
    sorted.sort();
    assert_eq!(severities, sorted);
    assert_eq!(severities.first(), Some(&Severity::Error));
}

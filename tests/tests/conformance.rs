//! NetworkPolicy conformance on the real kernel, modelled on the upstream
//! Kubernetes e2e netpol suite (test/e2e/network/netpol): namespaces x, y,
//! z with pods a, b, c; servers on 80 and 81 over TCP and UDP; each case
//! applies policies and checks the full 9x9 reachability matrix with real
//! connections through palisade's classifier. The pods are spread over two
//! nodes (network namespaces, one agent each, reading the in-process API
//! server), so every case checks pairs on one node and pairs across nodes,
//! where egress is enforced on the source's node and ingress on the
//! destination's.

use anyhow::{Context, Result, anyhow, bail, ensure};
use palisade_e2e::agent::trace_agrees;
use palisade_e2e::cluster::Cluster;
use palisade_e2e::netns::Netns;
use palisade_e2e::np;
use palisade_e2e::probe::{self, Matrix, Proto};
use palisade_e2e::suite::Fixture;
use std::net::{IpAddr, Ipv4Addr};

struct Env(Cluster);

impl std::ops::Deref for Env {
    type Target = Cluster;
    fn deref(&self) -> &Cluster {
        &self.0
    }
}

impl Fixture for Env {
    fn setup() -> Result<Env> {
        Ok(Env(Cluster::start_nodes("cf", 1, 2, &[])?))
    }

    fn reset(&self) -> Result<()> {
        self.0.reset()
    }
}

impl Env {
    /// Checks real reachability, then that `palisade trace` (asked of the
    /// agents of both pods' nodes, kernel check included: each checks the
    /// side it enforces) agrees on every pair.
    fn expect(&self, port: u16, proto: Proto, v6: bool, build: impl Fn(&mut Matrix)) -> Result<()> {
        self.lint()?;
        let mut m = Matrix::new(&self.topo.names(), true);
        build(&mut m);
        let expected = m.with_self_reachable();
        probe::check(&self.topo.all(), port, proto, v6, &expected).map_err(|e| anyhow!("{e}\n{}", self.log_tail()))?;
        let proto_name = proto.to_string();
        for from in &expected.names {
            for to in expected.names.iter().filter(|t| *t != from) {
                let at_source = self.agent_of(from).trace(from, to, port, &proto_name, v6)?;
                let at_destination = match self.agents_of(&[from, to]).len() {
                    1 => None,
                    _ => Some(self.agent_of(to).trace(from, to, port, &proto_name, v6)?),
                };
                let at_destination = at_destination.as_ref().unwrap_or(&at_source);
                let what = format!("{from} -> {to} {proto}/{port}");
                trace_agrees(&at_source, at_destination, expected.get(from, to), &what)?;
            }
        }
        Ok(())
    }

    /// `palisade lint` over the cluster as it is, read from the API server
    /// as on a live cluster: no finding but the real problems the cases
    /// create on purpose ([`LINT_EXPECTED`]). x/y/z has no DNS server, so an
    /// egress-isolated pod that may send port 53 nowhere is only info there
    /// (lint cannot know where names would be resolved), as is every pod
    /// that may reach the cloud metadata address.
    fn lint(&self) -> Result<()> {
        let agent = self.agent();
        let binary = palisade_e2e::agent::binary();
        let mut cmd = match &agent.netns {
            Some(ns) => palisade_e2e::netns::command_in(ns, &binary)?,
            None => std::process::Command::new(&binary),
        };
        if let Some(k) = &agent.kubeconfig {
            cmd.env("KUBECONFIG", k);
        }
        let out = cmd.args(["lint", "-o", "json"]).output()?;
        let report: serde_json::Value = serde_json::from_slice(&out.stdout)
            .with_context(|| format!("palisade lint: {}", String::from_utf8_lossy(&out.stderr)))?;
        let mut errors = false;
        for f in report["findings"].as_array().into_iter().flatten() {
            let (severity, check, object) = (f["severity"].as_str(), f["check"].as_str(), f["object"].as_str());
            errors |= severity == Some("error");
            let expected = match severity {
                Some("info") => matches!(check, Some("dns" | "metadata")),
                _ => LINT_EXPECTED.iter().any(|e| Some(e.0) == severity && Some(e.1) == check && Some(e.2) == object),
            };
            ensure!(expected, "palisade lint reports what is no problem: {f:#}");
        }
        ensure!(out.status.code() == Some(if errors { 1 } else { 0 }), "palisade lint exited with {}", out.status);
        Ok(())
    }

    fn tcp(&self, port: u16, build: impl Fn(&mut Matrix)) -> Result<()> {
        self.expect(port, Proto::Tcp, false, build)
    }
}

/// What `palisade lint` rightly reports on the cases (severity, check,
/// object): real problems the cases create on purpose.
const LINT_EXPECTED: &[(&str, &str, &str)] = &[
    // Before the namespace or pod is relabelled, these select nothing.
    ("warning", "selects-nothing", "NetworkPolicy x/upd-ns"),
    ("warning", "selects-nothing", "NetworkPolicy x/upd-pod"),
    ("warning", "selects-nothing", "NetworkPolicy x/isolate"),
    // ipBlocks naming pod addresses (Kubernetes: they should be
    // cluster-external; pod addresses change when pods are recreated).
    ("warning", "ip-block-pods", "NetworkPolicy x/cidr"),
    ("warning", "ip-block-pods", "NetworkPolicy x/except"),
    ("warning", "ip-block-pods", "NetworkPolicy x/overlap"),
    // Invalid policies the API server would reject.
    ("error", "invalid", "NetworkPolicy x/p81"),
    ("error", "invalid", "NetworkPolicy x/broken"),
];

/// The cluster IP of the Service in `service_backend_on_the_other_node_is_judged_there`.
const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 1, 10);

/// A kube-proxy-like DNAT of the cluster IP to one backend in a node's nat
/// table. Removed on drop.
struct Dnat<'a> {
    node: &'a Netns,
    rule: Vec<String>,
}

impl<'a> Dnat<'a> {
    fn new(node: &'a Netns, backend: IpAddr) -> Result<Dnat<'a>> {
        let rule: Vec<String> = ["PREROUTING", "-d", &format!("{VIP}/32"), "-p", "tcp", "--dport", "80", "-j", "DNAT"]
            .into_iter()
            .map(String::from)
            .chain(["--to-destination".into(), format!("{backend}:80")])
            .collect();
        let dnat = Dnat { node, rule };
        dnat.iptables("-A")?;
        Ok(dnat)
    }

    fn iptables(&self, op: &str) -> Result<()> {
        let mut args = vec!["iptables", "-t", "nat", op];
        args.extend(self.rule.iter().map(String::as_str));
        self.node.exec(&args).map(drop)
    }
}

impl Drop for Dnat<'_> {
    fn drop(&mut self) {
        let _ = self.iptables("-D");
    }
}

fn ns_of(pod: &str) -> &str {
    pod.split('/').next().unwrap_or("")
}

fn cases() -> Vec<palisade_e2e::suite::Case<Env>> {
    vec![
        ("default_deny_ingress", |e| {
            e.apply(&[np("x", "deny-ingress", "  podSelector: {}\n  policyTypes: [Ingress]\n")])?;
            e.tcp(80, |m| {
                m.each(|_, to| (ns_of(to) == "x").then_some(false));
            })?;
            e.expect(80, Proto::Udp, false, |m| {
                m.each(|_, to| (ns_of(to) == "x").then_some(false));
            })
        }),
        ("default_deny_all", |e| {
            e.apply(&[np("x", "deny-all", "  podSelector: {}\n  policyTypes: [Ingress, Egress]\n")])?;
            e.tcp(80, |m| {
                m.each(|from, to| (ns_of(to) == "x" || ns_of(from) == "x").then_some(false));
            })
        }),
        ("same_policy_name_in_every_namespace", |e| {
            // One name, three policies: each namespace's admits its own
            // source. Pods of different namespaces on one node must not
            // share what one of them allows.
            let from = |pod: &str| {
                format!(
                    "  podSelector: {{}}\n  ingress:\n  - from: [{{podSelector: {{matchLabels: {{pod: {pod}}}}}}}]\n"
                )
            };
            e.apply(&[np("x", "allow", &from("b")), np("y", "allow", &from("c")), np("z", "allow", &from("a"))])?;
            e.tcp(80, |m| {
                m.each(|from, to| {
                    let source = match ns_of(to) {
                        "x" => "x/b",
                        "y" => "y/c",
                        _ => "z/a",
                    };
                    Some(from == source)
                });
            })
        }),
        ("allow_from_pods_in_server_namespace_by_pod_selector", |e| {
            e.apply(&[np(
                "x",
                "allow-b",
                "  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - from: [{podSelector: {matchLabels: {pod: b}}}]\n",
            )])?;
            e.tcp(80, |m| {
                m.to("x/a", false).set("x/b", "x/a", true);
            })
        }),
        ("allow_ingress_for_a_target", |e| {
            e.apply(&[
                np("x", "deny-ingress", "  podSelector: {}\n  policyTypes: [Ingress]\n"),
                np("x", "allow-a", "  podSelector: {matchLabels: {pod: a}}\n  ingress: [{}]\n"),
            ])?;
            e.tcp(80, |m| {
                m.to("x/b", false).to("x/c", false);
            })
        }),
        ("allow_ingress_from_all_namespaces", |e| {
            e.apply(&[np(
                "x",
                "allow-all-ns",
                "  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - from: [{namespaceSelector: {}}]\n",
            )])?;
            e.tcp(80, |_| {})
        }),
        ("allow_only_from_other_namespace_by_namespace_selector", |e| {
            e.apply(&[np("x", "allow-y", "  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - from: [{namespaceSelector: {matchLabels: {ns: \"y\"}}}]\n")])?;
            e.tcp(80, |m| {
                m.to("x/a", false).each(|from, to| (to == "x/a" && ns_of(from) == "y").then_some(true));
            })
        }),
        ("pod_selector_match_expressions", |e| {
            e.apply(&[np(
                "x",
                "expr",
                "  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - from: [{podSelector: {matchExpressions: [{key: pod, operator: In, values: [b]}]}}]\n",
            )])?;
            e.tcp(80, |m| {
                m.to("x/a", false).set("x/b", "x/a", true);
            })
        }),
        ("namespace_selector_match_expressions", |e| {
            e.apply(&[np(
                "x",
                "expr",
                "  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - from: [{namespaceSelector: {matchExpressions: [{key: ns, operator: In, values: [\"y\"]}]}}]\n",
            )])?;
            e.tcp(80, |m| {
                m.to("x/a", false).each(|from, to| (to == "x/a" && ns_of(from) == "y").then_some(true));
            })
        }),
        ("pod_selector_or_namespace_selector", |e| {
            e.apply(&[np(
                "x",
                "or",
                "  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - from:\n    - namespaceSelector: {matchExpressions: [{key: ns, operator: NotIn, values: [x]}]}\n    - podSelector: {matchLabels: {pod: b}}\n",
            )])?;
            e.tcp(80, |m| {
                m.to("x/a", false)
                    .each(|from, to| (to == "x/a" && (ns_of(from) != "x" || from == "x/b")).then_some(true));
            })
        }),
        ("pod_selector_and_namespace_selector", |e| {
            e.apply(&[np(
                "x",
                "and",
                "  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - from:\n    - namespaceSelector: {matchExpressions: [{key: ns, operator: NotIn, values: [x]}]}\n      podSelector: {matchExpressions: [{key: pod, operator: In, values: [b, c]}]}\n",
            )])?;
            e.tcp(80, |m| {
                m.to("x/a", false);
                for from in ["y/b", "y/c", "z/b", "z/c"] {
                    m.set(from, "x/a", true);
                }
            })
        }),
        ("any_of_several_pod_selectors", |e| {
            e.apply(&[np(
                "x",
                "any",
                "  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - from: [{podSelector: {matchLabels: {pod: b}}}, {podSelector: {matchLabels: {pod: c}}}]\n",
            )])?;
            e.tcp(80, |m| {
                m.to("x/a", false).set("x/b", "x/a", true).set("x/c", "x/a", true);
            })
        }),
        ("pod_in_other_namespace_by_pod_and_namespace_selector", |e| {
            e.apply(&[np(
                "x",
                "ya",
                "  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - from: [{namespaceSelector: {matchLabels: {ns: \"y\"}}, podSelector: {matchLabels: {pod: a}}}]\n",
            )])?;
            e.tcp(80, |m| {
                m.to("x/a", false).set("y/a", "x/a", true);
            })
        }),
        ("ports", |e| {
            e.apply(&[np(
                "x",
                "p81",
                "  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - ports: [{port: 81}]\n",
            )])?;
            e.tcp(80, |m| {
                m.to("x/a", false);
            })?;
            e.tcp(81, |_| {})
        }),
        ("stacked_policies_with_overlapping_pod_selectors", |e| {
            let p81 = np(
                "x",
                "p81",
                "  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - from: [{namespaceSelector: {matchLabels: {ns: \"y\"}}}]\n    ports: [{port: 81}]\n",
            );
            e.apply(std::slice::from_ref(&p81))?;
            let from_y = |m: &mut Matrix| {
                m.to("x/a", false).each(|from, to| (to == "x/a" && ns_of(from) == "y").then_some(true));
            };
            e.tcp(80, |m| {
                m.to("x/a", false);
            })?;
            e.tcp(81, from_y)?;
            let p80 = np(
                "x",
                "p80",
                "  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - from: [{namespaceSelector: {matchLabels: {ns: \"y\"}}}]\n    ports: [{port: 80}]\n",
            );
            e.apply(&[p81, p80])?;
            e.tcp(80, from_y)?;
            e.tcp(81, from_y)
        }),
        ("allow_all", |e| {
            e.apply(&[np("x", "allow-all", "  podSelector: {}\n  ingress: [{}]\n")])?;
            e.tcp(80, |_| {})
        }),
        ("ingress_on_one_named_port", |e| {
            e.apply(&[np(
                "x",
                "named",
                "  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - ports: [{port: serve-81-tcp}]\n",
            )])?;
            e.tcp(81, |_| {})?;
            e.tcp(80, |m| {
                m.to("x/a", false);
            })
        }),
        ("ingress_from_namespace_on_one_named_port", |e| {
            e.apply(&[np(
                "x",
                "named",
                "  podSelector: {}\n  ingress:\n  - from: [{namespaceSelector: {matchLabels: {ns: \"y\"}}}]\n    ports: [{port: serve-80-tcp, protocol: TCP}]\n",
            )])?;
            e.tcp(80, |m| {
                m.each(|from, to| (ns_of(to) == "x").then_some(ns_of(from) == "y"));
            })?;
            e.tcp(81, |m| {
                m.each(|_, to| (ns_of(to) == "x").then_some(false));
            })
        }),
        ("egress_on_one_named_port", |e| {
            e.apply(&[np(
                "x",
                "named",
                "  podSelector: {matchLabels: {pod: a}}\n  policyTypes: [Egress]\n  egress:\n  - ports: [{port: serve-80-tcp}]\n",
            )])?;
            e.tcp(80, |_| {})?;
            e.tcp(81, |m| {
                m.from("x/a", false);
            })
        }),
        ("named_port_protocol_must_match", |e| {
            // serve-80-udp names UDP 80: it must not open TCP 80.
            e.apply(&[np("x", "named", "  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - ports: [{port: serve-80-udp, protocol: UDP}]\n")])?;
            e.tcp(80, |m| {
                m.to("x/a", false);
            })?;
            e.expect(80, Proto::Udp, false, |_| {})
        }),
        ("updated_policy", |e| {
            let spec = |port: u16| {
                format!(
                    "  podSelector: {{matchLabels: {{pod: a}}}}\n  ingress:\n  - from: [{{podSelector: {{matchLabels: {{pod: b}}}}}}]\n    ports: [{{port: {port}}}]\n"
                )
            };
            e.apply(&[np("x", "upd", &spec(80))])?;
            e.tcp(80, |m| {
                m.to("x/a", false).set("x/b", "x/a", true);
            })?;
            e.apply(&[np("x", "upd", &spec(81))])?;
            e.tcp(80, |m| {
                m.to("x/a", false);
            })?;
            e.tcp(81, |m| {
                m.to("x/a", false).set("x/b", "x/a", true);
            })
        }),
        ("ingress_from_updated_namespace", |e| {
            e.apply(&[np(
                "x",
                "upd-ns",
                "  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - from: [{namespaceSelector: {matchLabels: {ns2: updated}}}]\n",
            )])?;
            e.tcp(80, |m| {
                m.to("x/a", false);
            })?;
            e.edit_base(|s| s.replace("labels: {ns: \"y\"}", "labels: {ns: \"y\", ns2: updated}"))?;
            let r = e.tcp(80, |m| {
                m.to("x/a", false).each(|from, to| (to == "x/a" && ns_of(from) == "y").then_some(true));
            });
            e.reset()?;
            r
        }),
        ("ingress_from_updated_pod", |e| {
            e.apply(&[np("x", "upd-pod", "  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - from: [{podSelector: {matchLabels: {pod: b-new}}}]\n")])?;
            e.tcp(80, |m| {
                m.to("x/a", false);
            })?;
            e.edit_base(|s| {
                s.replace(
                    "metadata: {name: b, namespace: \"x\", labels: {pod: b}}",
                    "metadata: {name: b, namespace: \"x\", labels: {pod: b-new}}",
                )
            })?;
            let r = e.tcp(80, |m| {
                m.to("x/a", false).set("x/b", "x/a", true);
            });
            e.reset()?;
            r
        }),
        ("deny_ingress_from_other_namespaces", |e| {
            e.apply(&[np("x", "same-ns", "  podSelector: {}\n  ingress:\n  - from: [{podSelector: {}}]\n")])?;
            e.tcp(80, |m| {
                m.each(|from, to| (ns_of(to) == "x" && ns_of(from) != "x").then_some(false));
            })
        }),
        ("deny_ingress_to_updated_pod", |e| {
            e.apply(&[np(
                "x",
                "isolate",
                "  podSelector: {matchLabels: {target: isolated}}\n  policyTypes: [Ingress]\n",
            )])?;
            e.tcp(80, |_| {})?;
            e.edit_base(|s| {
                s.replace(
                    "metadata: {name: a, namespace: \"x\", labels: {pod: a}}",
                    "metadata: {name: a, namespace: \"x\", labels: {pod: a, target: isolated}}",
                )
            })?;
            let r = e.tcp(80, |m| {
                m.to("x/a", false);
            });
            e.reset()?;
            r
        }),
        ("deny_egress_by_pod_selector", |e| {
            e.apply(&[np("x", "deny-egress", "  podSelector: {matchLabels: {pod: a}}\n  policyTypes: [Egress]\n")])?;
            // Replies to connections x/a accepts still leave it.
            e.tcp(80, |m| {
                m.from("x/a", false);
            })
        }),
        ("deny_egress_from_all_pods_in_namespace", |e| {
            e.apply(&[np("x", "deny-egress", "  podSelector: {}\n  policyTypes: [Egress]\n")])?;
            e.tcp(80, |m| {
                m.each(|from, _| (ns_of(from) == "x").then_some(false));
            })
        }),
        ("ingress_and_egress_together", |e| {
            e.apply(&[np(
                "x",
                "both",
                "  podSelector: {matchLabels: {pod: a}}\n  policyTypes: [Ingress, Egress]\n  ingress:\n  - from: [{podSelector: {matchLabels: {pod: b}}}]\n  egress:\n  - to: [{namespaceSelector: {matchLabels: {ns: \"y\"}}}]\n",
            )])?;
            e.tcp(80, |m| {
                m.to("x/a", false).set("x/b", "x/a", true).from("x/a", false);
                for to in ["y/a", "y/b", "y/c"] {
                    m.set("x/a", to, true);
                }
            })
        }),
        ("egress_denied_on_client_even_if_server_allows", |e| {
            e.apply(&[
                np("x", "egress-y", "  podSelector: {matchLabels: {pod: a}}\n  policyTypes: [Egress]\n  egress:\n  - to: [{namespaceSelector: {matchLabels: {ns: \"y\"}}}]\n"),
                np("z", "allow-all", "  podSelector: {}\n  ingress: [{}]\n"),
            ])?;
            e.tcp(80, |m| {
                m.from("x/a", false).each(|from, to| (from == "x/a" && ns_of(to) == "y").then_some(true));
            })
        }),
        ("egress_to_pod_in_other_namespace_by_pod_and_namespace_selector", |e| {
            e.apply(&[np(
                "x",
                "egress-ya",
                "  podSelector: {matchLabels: {pod: a}}\n  policyTypes: [Egress]\n  egress:\n  - to: [{namespaceSelector: {matchLabels: {ns: \"y\"}}, podSelector: {matchLabels: {pod: a}}}]\n",
            )])?;
            e.tcp(80, |m| {
                m.from("x/a", false).set("x/a", "y/a", true);
            })
        }),
        ("any_port_on_one_protocol", |e| {
            e.apply(&[np(
                "x",
                "tcp-only",
                "  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - ports: [{protocol: TCP}]\n",
            )])?;
            e.tcp(80, |_| {})?;
            e.tcp(81, |_| {})?;
            e.expect(80, Proto::Udp, false, |m| {
                m.to("x/a", false);
            })
        }),
        ("udp_only_policy_does_not_open_tcp", |e| {
            e.apply(&[np(
                "x",
                "udp81",
                "  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - ports: [{protocol: UDP, port: 81}]\n",
            )])?;
            e.tcp(81, |m| {
                m.to("x/a", false);
            })?;
            e.expect(81, Proto::Udp, false, |_| {})
        }),
        ("sctp_policy_is_not_tcp", |e| {
            e.apply(&[np(
                "x",
                "sctp80",
                "  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - ports: [{protocol: SCTP, port: 80}]\n",
            )])?;
            e.tcp(80, |m| {
                m.to("x/a", false);
            })
        }),
        ("sctp_by_crafted_packets", |e| {
            e.apply(&[np(
                "x",
                "sctp80",
                "  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - ports: [{protocol: SCTP, port: 80}]\n",
            )])?;
            e.expect(80, Proto::Sctp, false, |_| {})?;
            e.expect(81, Proto::Sctp, false, |m| {
                m.to("x/a", false);
            })?;
            e.expect(80, Proto::Sctp, true, |_| {})?;
            e.apply(&[np(
                "x",
                "sctp-named",
                "  podSelector: {}\n  ingress:\n  - ports: [{protocol: SCTP, port: serve-81-sctp}]\n",
            )])?;
            e.expect(81, Proto::Sctp, false, |_| {})?;
            e.expect(80, Proto::Sctp, false, |m| {
                m.each(|_, to| (ns_of(to) == "x").then_some(false));
            })
        }),
        ("multiple_ingress_policies_allow_all_wins", |e| {
            let p80 = np("x", "p80", "  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - ports: [{port: 80}]\n");
            e.apply(std::slice::from_ref(&p80))?;
            e.tcp(81, |m| {
                m.to("x/a", false);
            })?;
            e.apply(&[p80, np("x", "allow-all", "  podSelector: {matchLabels: {pod: a}}\n  ingress: [{}]\n")])?;
            e.tcp(81, |_| {})
        }),
        ("multiple_egress_policies_allow_all_wins", |e| {
            let p80 = np(
                "x",
                "p80",
                "  podSelector: {matchLabels: {pod: a}}\n  policyTypes: [Egress]\n  egress:\n  - ports: [{port: 80}]\n",
            );
            e.apply(std::slice::from_ref(&p80))?;
            e.tcp(81, |m| {
                m.from("x/a", false);
            })?;
            e.apply(&[
                p80,
                np(
                    "x",
                    "allow-all",
                    "  podSelector: {matchLabels: {pod: a}}\n  policyTypes: [Egress]\n  egress: [{}]\n",
                ),
            ])?;
            e.tcp(81, |_| {})
        }),
        ("stop_enforcing_after_deletion", |e| {
            e.apply(&[np("x", "deny-all", "  podSelector: {}\n  policyTypes: [Ingress, Egress]\n")])?;
            e.tcp(80, |m| {
                m.each(|from, to| (ns_of(to) == "x" || ns_of(from) == "x").then_some(false));
            })?;
            e.apply(&[])?;
            e.tcp(80, |_| {})
        }),
        ("egress_to_cidr_block", |e| {
            let ya = e.topo.pod("y/a").spec.ip4;
            e.apply(&[np("x", "cidr", &format!("  podSelector: {{matchLabels: {{pod: a}}}}\n  policyTypes: [Egress]\n  egress:\n  - to: [{{ipBlock: {{cidr: {ya}/32}}}}]\n"))])?;
            e.tcp(80, |m| {
                m.from("x/a", false).set("x/a", "y/a", true);
            })
        }),
        ("egress_cidr_except", |e| {
            let ya = e.topo.pod("y/a").spec.ip4;
            e.apply(&[np(
                "x",
                "except",
                &format!("  podSelector: {{matchLabels: {{pod: a}}}}\n  policyTypes: [Egress]\n  egress:\n  - to: [{{ipBlock: {{cidr: 10.240.0.0/16, except: [{ya}/32]}}}}]\n"),
            )])?;
            e.tcp(80, |m| {
                m.set("x/a", "y/a", false);
            })
        }),
        ("ip_in_both_cidr_and_except_of_different_rules_is_allowed", |e| {
            let ya = e.topo.pod("y/a").spec.ip4;
            e.apply(&[np(
                "x",
                "overlap",
                &format!("  podSelector: {{matchLabels: {{pod: a}}}}\n  policyTypes: [Egress]\n  egress:\n  - to: [{{ipBlock: {{cidr: 10.240.0.0/16, except: [{ya}/32]}}}}]\n  - to: [{{ipBlock: {{cidr: {ya}/32}}}}]\n"),
            )])?;
            e.tcp(80, |_| {})
        }),
        ("ingress_and_egress_isolation_are_independent", |e| {
            e.apply(&[np("x", "deny-egress", "  podSelector: {matchLabels: {pod: a}}\n  policyTypes: [Egress]\n")])?;
            e.tcp(80, |m| {
                m.from("x/a", false);
            })?;
            e.apply(&[
                np("x", "deny-egress", "  podSelector: {matchLabels: {pod: a}}\n  policyTypes: [Egress]\n"),
                np("x", "deny-ingress", "  podSelector: {matchLabels: {pod: a}}\n  policyTypes: [Ingress]\n"),
            ])?;
            e.tcp(80, |m| {
                m.from("x/a", false).to("x/a", false);
            })
        }),
        ("namespace_selector_on_default_name_label", |e| {
            e.apply(&[np(
                "x",
                "by-name",
                "  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: \"y\"}}}]\n",
            )])?;
            e.tcp(80, |m| {
                m.to("x/a", false).each(|from, to| (to == "x/a" && ns_of(from) == "y").then_some(true));
            })
        }),
        ("namespace_selector_expressions_on_default_name_label", |e| {
            e.apply(&[np(
                "x",
                "by-name",
                "  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - from: [{namespaceSelector: {matchExpressions: [{key: kubernetes.io/metadata.name, operator: NotIn, values: [\"y\"]}]}}]\n",
            )])?;
            e.tcp(80, |m| {
                m.each(|from, to| (to == "x/a" && ns_of(from) == "y").then_some(false));
            })
        }),
        ("end_port_range", |e| {
            e.apply(&[np(
                "x",
                "range",
                "  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - ports: [{port: 81, endPort: 90}]\n",
            )])?;
            e.tcp(80, |m| {
                m.to("x/a", false);
            })?;
            e.tcp(81, |_| {})
        }),
        ("multiple_end_port_ranges", |e| {
            e.apply(&[np(
                "x",
                "ranges",
                "  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - ports: [{port: 70, endPort: 80}, {port: 81, endPort: 81, protocol: UDP}]\n",
            )])?;
            e.tcp(80, |_| {})?;
            e.tcp(81, |m| {
                m.to("x/a", false);
            })?;
            e.expect(81, Proto::Udp, false, |_| {})
        }),
        ("ipv6_namespace_selector", |e| {
            e.apply(&[np(
                "x",
                "allow-y",
                "  podSelector: {}\n  ingress:\n  - from: [{namespaceSelector: {matchLabels: {ns: \"y\"}}}]\n",
            )])?;
            e.expect(80, Proto::Tcp, true, |m| {
                m.each(|from, to| (ns_of(to) == "x").then_some(ns_of(from) == "y"));
            })?;
            e.expect(80, Proto::Udp, true, |m| {
                m.each(|from, to| (ns_of(to) == "x").then_some(ns_of(from) == "y"));
            })
        }),
        ("ipv6_cidr_does_not_match_ipv4", |e| {
            e.apply(&[np(
                "x",
                "v6-only",
                "  podSelector: {matchLabels: {pod: a}}\n  policyTypes: [Egress]\n  egress:\n  - to: [{ipBlock: {cidr: '::/0'}}]\n",
            )])?;
            e.tcp(80, |m| {
                m.from("x/a", false);
            })?;
            e.expect(80, Proto::Tcp, true, |_| {})
        }),
        ("node_reaches_isolated_pods", |e| {
            e.apply(&[np("x", "deny-ingress", "  podSelector: {}\n  policyTypes: [Ingress]\n")])?;
            let xa = e.topo.pod("x/a").spec.ip4;
            let node = e.node_of("x/a").context("x/a runs on a node")?;
            let ok = node.run(move || std::net::TcpStream::connect_timeout(&(xa, 80).into(), probe::TIMEOUT).is_ok());
            if !ok {
                bail!("the node could not reach an isolated pod (kubelet probes would fail)");
            }
            Ok(())
        }),
        ("service_backend_on_the_other_node_is_judged_there", |e| {
            // x/a on n1 sends to a cluster IP that n1's kube-proxy-like
            // DNAT sends to y/a on n2: x/a's egress is judged against y/a
            // on n1 (host egress on its uplink), y/a's ingress on n2.
            let (client, backend) = (e.topo.pod("x/a"), e.topo.pod("y/a"));
            ensure!(client.spec.node != backend.spec.node, "x/a and y/a must be on different nodes");
            e.add(
                "svc",
                &format!(
                    "apiVersion: v1\nkind: Service\nmetadata: {{name: web, namespace: \"y\"}}\nspec:\n  clusterIP: {VIP}\n  clusterIPs: [{VIP}]\n  ports: [{{port: 80, protocol: TCP}}]\n"
                ),
            )?;
            let _dnat = Dnat::new(e.node_of("x/a").context("x/a runs on a node")?, backend.ip(false))?;
            let egress_to = |pod: &str| {
                np(
                    "x",
                    "egress",
                    &format!(
                        "  podSelector: {{matchLabels: {{pod: a}}}}\n  policyTypes: [Egress]\n  egress:\n  - to: [{{namespaceSelector: {{matchLabels: {{ns: \"y\"}}}}, podSelector: {{matchLabels: {{pod: {pod}}}}}}}]\n"
                    ),
                )
            };
            let to_vip = || probe::probe(client, IpAddr::V4(VIP), 80, Proto::Tcp);
            e.apply(&[egress_to("a")])?;
            ensure!(to_vip(), "x/a may reach y/a, and reaches it through the Service");
            e.apply(&[egress_to("b")])?;
            ensure!(!to_vip(), "x/a may not reach y/a, even through a Service");
            let events =
                e.agent_of("x/a").events(&["--verdict", "dropped", "--direction", "egress", "--pod", "x/a"])?;
            let named = events.iter().any(|ev| {
                ev.destination.pod.as_deref() == Some("a") && ev.destination.namespace.as_deref() == Some("y")
            });
            ensure!(named, "x/a's node reports the drop against the real backend y/a: {events:#?}");
            let deny_x = np(
                "y",
                "from-z",
                "  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - from: [{namespaceSelector: {matchLabels: {ns: \"z\"}}}]\n",
            );
            e.apply(&[egress_to("a"), deny_x])?;
            ensure!(!to_vip(), "y/a's ingress policy applies to Service traffic from the other node");
            let events =
                e.agent_of("y/a").events(&["--verdict", "dropped", "--direction", "ingress", "--pod", "y/a"])?;
            let named = events
                .iter()
                .any(|ev| ev.source.pod.as_deref() == Some("a") && ev.source.namespace.as_deref() == Some("x"));
            ensure!(named, "y/a's node reports the drop from x/a: {events:#?}");
            Ok(())
        }),
        ("policy_change_redecides_open_connections", |e| {
            e.apply(&[])?;
            let sock = probe::socket_in(e.topo.pod("y/a"), false, Proto::Tcp)?;
            let to = std::net::SocketAddr::new(e.topo.pod("x/a").ip(false), 80);
            sock.connect_timeout(&to.into(), probe::TIMEOUT).context("connect")?;
            let mut conn: std::net::TcpStream = sock.into();
            conn.set_read_timeout(Some(probe::TIMEOUT))?;
            let ping = |c: &mut std::net::TcpStream| -> bool {
                use std::io::{Read, Write};
                let mut buf = [0u8; 8];
                c.write_all(b"ping").is_ok() && c.read(&mut buf).map(|n| n == 4).unwrap_or(false)
            };
            if !ping(&mut conn) {
                bail!("open connection did not work before the policy change");
            }
            e.apply(&[np("x", "deny-ingress", "  podSelector: {}\n  policyTypes: [Ingress]\n")])?;
            if ping(&mut conn) {
                bail!("an open connection kept working after a policy change denied it");
            }
            Ok(())
        }),
        ("invalid_edit_keeps_last_valid_policy", |e| {
            let good = np("x", "p81", "  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - ports: [{port: 81}]\n");
            e.apply(std::slice::from_ref(&good))?;
            let bad = good.replace("port: 81", "port: 81, endPort: 70");
            for st in e.put(&[bad])? {
                let err = &st["errors"][0];
                if err["field"] != "spec.ingress[0].ports[0].endPort" || err["object"] != "NetworkPolicy x/p81" {
                    bail!("expected an error naming the object and field, got {}", st["errors"]);
                }
                if !err["action"].as_str().is_some_and(|a| a.contains("last valid")) {
                    bail!("expected the last valid version kept, got {}", st["errors"]);
                }
            }
            e.tcp(80, |m| {
                m.to("x/a", false);
            })?;
            e.tcp(81, |_| {})
        }),
        ("invalid_new_policy_fails_closed", |e| {
            e.apply(&[])?;
            let broken = np(
                "x",
                "broken",
                "  podSelector: {matchLabels: {pod: a}}\n  ingress:\n  - from: [{ipBlock: {cidr: 10.0.0.0/33}}]\n",
            );
            for st in e.put(&[broken])? {
                if st["errors"][0]["field"] != "spec.ingress[0].from[0].ipBlock.cidr" {
                    bail!("expected an error naming the field, got {}", st["errors"]);
                }
            }
            e.tcp(80, |m| {
                m.to("x/a", false);
            })
        }),
    ]
}

fn main() {
    palisade_e2e::suite::run(cases())
}

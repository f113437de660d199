# Regenerates upstream.steps' steps from the upstream Go tests:
#   python3 extract.py <bare git dir of network-policy-api> (then prepend the header)
# Extracts each upstream conformance test's steps, in source order.
import re, subprocess, sys
M = sys.argv[1] if len(sys.argv) > 1 else "/work/.mirror/kubernetes-sigs+network-policy-api/repo"
def show(p): return subprocess.run(["git","-C",M,"show","HEAD:"+p],capture_output=True,text=True,check=True).stdout
files = [f for f in subprocess.run(["git","-C",M,"ls-tree","--name-only","HEAD","conformance/tests/"],capture_output=True,text=True).stdout.split() if not f.endswith("main.go")]
HP = 34345
out = []
for f in files:
    src = show(f)
    tests = [(m.start(), m.group(1)) for m in re.finditer(r'var (\w+) = suite\.ConformanceTest\{', src)]
    for ti,(start,name) in enumerate(tests):
        end = tests[ti+1][0] if ti+1 < len(tests) else len(src)
        body = src[start:end]
        manifest = re.search(r'Manifests:\s*\[\]string\{"([^"]+)"', body).group(1)
        feats = re.findall(r'suite\.Support(ClusterNetworkPolicy\w*)', body)
        out.append(f"test {name} {manifest} {','.join(f for f in feats)}")
        pats = [
          ("sub", r't\.Run\("([^"]+)"'),
          ("pod", r'(\w+) :?= kubernetes\.GetPod\(t, s\.Client, "([^"]+)", "([^"]+)"'),
          ("cnp", r'kubernetes\.GetClusterNetworkPolicy\(t, s\.Client, "([^"]+)"'),
          ("poke", r'PokeServer\(t, s\.ClientSet, &s\.KubeConfig, "([^"]+)", "([^"]+)", "(\w+)",\s*(\w+)\.Status\.PodIP, int32\(([^)]+\]?)\), s\.TimeoutConfig, (true|false)\)'),
          ("swap", r'mutate\.Spec\.(Ingress|Egress)\[(\d)\] = mutate\.Spec\.\1\[(\d)\]'),
          ("prio", r'mutate\.Spec\.Priority = (\d+)'),
          ("action", r'mutate\.Spec\.(Ingress|Egress)\[(\d)\]\.Action = api\.ClusterNetworkPolicyRuleAction(\w+)'),
          ("strvar", r'(\w+) := "(\w+)"\n'),
          ("named", r'mutate\.Spec\.(Ingress|Egress)\[(\d)\] = (\w+PortRule)'),
          ("namedsrc", r'DestinationNamedPort: (\w+)'),
          ("nsget", r'GetNamespace\(t, s\.Client, "([^"]+)"'),
          ("nslabel", r'SetLabels\(map\[string\]string\{"([^"]+)": "([^"]+)"\}\)'),
          ("npname", r'Name:\s+"([^"]+)",\s*\}, np\)'),
          ("npdel", r's\.Client\.Delete\(ctx, np\)'),
          ("prepend", r'mutate\.Spec\.Egress = append\(newRule'),
        ]
        ev = sorted((m.start(), k, m) for k,p in pats for m in re.finditer(p, body))
        pods, strs = {}, {}; cnp=None; ns=None; npname=None; named=None; np_ns=None
        for _,k,m in ev:
            g = m.groups()
            if k=="sub": out.append(f"sub {g[0]}")
            elif k=="pod": pods[g[0]] = f"{g[1]}/{g[2]}"
            elif k=="cnp": cnp = g[0]
            elif k=="poke":
                port = g[4]
                hm = re.match(r's\.HostNetworkPorts\[(\d)\]', port)
                if hm: port = str(HP+int(hm.group(1)))
                out.append(f"poke {g[0]}/{g[1]} {pods[g[3]]} {g[2]} {port} {'allow' if g[5]=='true' else 'deny'}")
            elif k=="swap": out.append(f"swap {cnp} {g[0].lower()} {g[1]} {g[2]}")
            elif k=="prio": out.append(f"priority {cnp} {g[0]}")
            elif k=="action": out.append(f"action {cnp} {g[0].lower()} {g[1]} {g[2]}")
            elif k=="strvar": strs[g[0]] = g[1]
            elif k=="namedsrc": named = strs[g[0]]
            elif k=="named": out.append(f"named-port {cnp} {g[0].lower()} {g[1]} {named}")
            elif k=="nsget": ns = g[0]
            elif k=="nslabel": out.append(f"ns-labels {ns} {g[0]}={g[1]}")
            elif k=="npname": npname = g[0]
            elif k=="npdel": out.append(f"delete-np network-policy-conformance-gryffindor/{npname}")
            elif k=="prepend": out.append(f"prepend-egress-networks {cnp} allow-egress-to-specific-podIPs {pods['serverPodRavenclaw']} {pods['serverPodHufflepuff']}")
        out.append("")
print("\n".join(out))

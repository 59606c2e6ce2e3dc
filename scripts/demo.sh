#!/usr/bin/env bash
# `make demo`: two lab clusters with the echo app, joined into a cluster mesh, then a look at what was built.
# Uses the default lab ($MESHCTL_HOME or ~/.meshctl); clusters c1 and c2 are re-created.
set -euo pipefail
cd "$(dirname "$0")/.."
meshctl() { node dist/bin/meshctl.js "$@"; }

for c in c1 c2; do
  if meshctl lab list -o json | node -e 'const j=JSON.parse(require("fs").readFileSync(0));process.exit(j.clusters.some(c=>c.name===process.argv[1])?0:1)' "$c"; then
    meshctl lab delete "$c"
  fi
done

meshctl lab create c1 --id 1 --pod-cidr 10.1.0.0/16 --nodes 2
meshctl lab create c2 --id 2 --pod-cidr 10.2.0.0/16 --nodes 2
for c in c1 c2; do
  meshctl lab apply -f fixtures/echo-app.yaml --context "$c"
done

echo
meshctl lab list
for c in c1 c2; do
  echo
  echo "== pods of $c"
  meshctl lab get pods -n demo --context "$c"
done

echo
echo "== in each cluster, the client pod calls the echo Service (eBPF load balancing across nodes)"
for c in c1 c2; do
  vip=$(meshctl lab get svc -n demo -o json --context "$c" | node -e 'const j=JSON.parse(require("fs").readFileSync(0));console.log(j.items[0].spec.clusterIP)')
  for i in 1 2 3 4; do
    meshctl lab exec --context "$c" demo/client -- curl -s -m 5 "http://$vip/" |
      node -e 'const r=JSON.parse(require("fs").readFileSync(0));console.log(`  ${process.argv[1]} -> ${r.cluster}/${r.node}/${r.pod}`)' "$vip" || true
  done
done

echo
echo "== cluster mesh: enable both clusters, connect them, wait until every node is connected and synced"
meshctl enable --context c1
meshctl enable --context c2
meshctl connect --context c1 --destination-context c2
meshctl status --context c1 --wait --wait-duration 2m
meshctl status --context c2 --wait --wait-duration 2m

echo
echo "== c1's client pod calls c2's echo pods by their pod IPs (across clusters, no gateway)"
for ip in $(meshctl lab get pods -n demo -o json --context c2 | node -e 'const j=JSON.parse(require("fs").readFileSync(0));console.log(j.items.filter(p=>p.metadata.name.startsWith("echo")).map(p=>p.status.podIP).join(" "))'); do
  meshctl lab exec --context c1 demo/client -- curl -s -m 5 "http://$ip:8080/" |
    node -e 'const r=JSON.parse(require("fs").readFileSync(0));console.log(`  c1/client -> ${process.argv[1]} -> ${r.cluster}/${r.node}/${r.pod}`)' "$ip" || true
done

cat <<MSG

Next:
  node dist/bin/meshctl.js lab exec --context c1 demo/client -- sh     # a shell inside a pod
  node dist/bin/meshctl.js lab get svc -n demo --context c1
  node dist/bin/meshctl.js status --context c1                         # the mesh as c1's agents see it
  node dist/bin/meshctl.js lab delete --all                            # remove every trace
MSG

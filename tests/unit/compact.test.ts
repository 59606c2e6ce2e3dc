/** Compact records read like the objects they stand for and share what pods of one workload repeat. */
import { describe, expect, test } from '@jest/globals';
import type { KubeObject } from '../../src/cluster/types.js';
import { compactMeshEndpoint, compactPod } from '../../src/agent/compact.js';
import { namedPorts, objKey, podIp, podNode, podRunning } from '../../src/agent/controllers/shared.js';

const pod = (name: string, node: string, ip: string): KubeObject => ({
  apiVersion: 'v1',
  kind: 'Pod',
  metadata: { name, namespace: 'demo', labels: { app: 'echo' }, uid: `u-${name}`, resourceVersion: '1234' },
  spec: { nodeName: node, containers: [{ name: 'c', image: 'x', ports: [{ name: 'http', containerPort: 8080 }, { containerPort: 9 }] }] },
  status: { phase: 'Running', podIP: ip, hostIP: '172.30.0.1', meshctl: { netns: 'ns1', lxc: 'lxc1' } },
});

describe('compact records', () => {
  const cases: Array<{ name: string; obj: KubeObject; local?: string; json: unknown }> = [
    {
      name: 'pod, wiring kept (no local node given)',
      obj: pod('a', 'n1', '10.0.0.1'),
      json: { apiVersion: 'v1', kind: 'Pod', metadata: { name: 'a', namespace: 'demo', labels: { app: 'echo' }, resourceVersion: '1234' }, spec: { nodeName: 'n1', containers: [{ ports: [{ name: 'http', containerPort: 8080 }] }] }, status: { phase: 'Running', podIP: '10.0.0.1', meshctl: { netns: 'ns1', lxc: 'lxc1' } } },
    },
    {
      name: 'pod of another node: no wiring',
      obj: pod('b', 'n2', '10.0.0.2'),
      local: 'n1',
      json: { apiVersion: 'v1', kind: 'Pod', metadata: { name: 'b', namespace: 'demo', labels: { app: 'echo' }, resourceVersion: '1234' }, spec: { nodeName: 'n2', containers: [{ ports: [{ name: 'http', containerPort: 8080 }] }] }, status: { phase: 'Running', podIP: '10.0.0.2' } },
    },
    {
      name: 'pod with a non-numeric resourceVersion and no ports',
      obj: { apiVersion: 'v1', kind: 'Pod', metadata: { name: 'c', resourceVersion: '007' }, spec: {}, status: {} },
      json: { apiVersion: 'v1', kind: 'Pod', metadata: { name: 'c', resourceVersion: '007' }, spec: {}, status: {} },
    },
  ];
  for (const c of cases) {
    test(c.name, () => {
      const r = compactPod(c.obj, c.local);
      expect(JSON.parse(JSON.stringify(r))).toEqual(c.json);
      expect(r.metadata).toEqual((c.json as KubeObject).metadata);
      expect({ node: podNode(r), ip: podIp(r), running: podRunning(r), key: objKey(r) }).toEqual({ node: podNode(c.obj), ip: podIp(c.obj), running: podRunning(c.obj), key: objKey(c.obj) });
    });
  }

  test('pods of one workload share their labels and named ports', () => {
    const [a, b] = [compactPod(pod('a', 'n1', '10.0.0.1')), compactPod(pod('b', 'n2', '10.0.0.2'))];
    expect(a.metadata.labels).toBe(b.metadata.labels);
    expect(namedPorts(a)).toBe(namedPorts(b));
    expect(namedPorts(a)).toEqual({ http: [{ port: 8080, protocol: 6 }] });
    expect(namedPorts(a)).toBe(namedPorts(pod('x', 'n3', '10.0.0.9')));
  });

  test('MeshEndpoint', () => {
    const e: KubeObject = { apiVersion: 'meshctl.io/v1', kind: 'MeshEndpoint', metadata: { name: 'a', namespace: 'demo', resourceVersion: '99' }, spec: { ip: '10.0.0.1', identity: 70000, node: 'n1', nodeIP: '172.30.0.1', endpointID: 5 } };
    const r = compactMeshEndpoint(e);
    expect(JSON.parse(JSON.stringify(r))).toEqual(e);
    expect(JSON.stringify(r.spec)).toBe(JSON.stringify(e.spec));
    expect(objKey(r)).toBe('demo/a');
  });
});

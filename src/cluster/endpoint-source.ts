/**
 * Where an agent learns how a pod on its node is wired: what CNI ADD hands a Kubernetes agent
 * (the pod's address, the host side of its veth pair, its network namespace). The lab wires pods
 * itself and records the result in the pod object (`status.podIP`, `status.meshctl`), so its
 * source reads that; a Kubernetes provider would fill one from its CNI plugin's calls.
 */
import type { Pod } from './schemas.js';

/** One pod's wiring on this node. */
export interface PodEndpoint {
  /** The pod's IPv4 address. */
  readonly ip: string;
  /** Host-side device of the pod's veth pair (the `lxc…` the datapath attaches to), ≤ 15 chars. */
  readonly ifname: string;
  /** The pod's network namespace (a name under /run/netns). */
  readonly netns: string;
}

export interface EndpointSource {
  /** The wiring of `pod`, or null while it is not wired yet (no CNI ADD so far). */
  endpointOf(pod: Pod): PodEndpoint | null;
  /**
   * Call `onChange` with a pod key (`ns/name`) when a pod's wiring changes without a change of its
   * pod object; returns the unsubscribe function. Sources whose wiring travels in the pod object
   * (the lab's) never call it: the pod informer's update is the signal.
   */
  subscribe(onChange: (podKey: string) => void): () => void;
}

/** The lab's pods carry their wiring in `status.podIP` and `status.meshctl` (set by `lab apply`). */
export class LabEndpointSource implements EndpointSource {
  endpointOf(pod: Pod): PodEndpoint | null {
    const st = pod.status;
    if (!st?.podIP || !st.meshctl) return null;
    return { ip: st.podIP, ifname: st.meshctl.lxc, netns: st.meshctl.netns };
  }

  subscribe(): () => void {
    return () => undefined;
  }
}

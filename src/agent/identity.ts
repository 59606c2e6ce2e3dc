/**
 * Identities moved to src/cluster/ (identity.ts: numbers, the IdentityAllocator interface;
 * identity-etcd.ts: the lab store implementation). Re-exported here for the current agent.
 */
export {
  CLUSTER_ID_MAX,
  CLUSTER_ID_MIN,
  IDENTITY_API_VERSION,
  IDENTITY_HEALTH,
  IDENTITY_HOST,
  IDENTITY_INIT,
  IDENTITY_KIND,
  IDENTITY_KUBE_APISERVER,
  IDENTITY_LOCAL_MAX,
  IDENTITY_LOCAL_MIN,
  IDENTITY_REMOTE_NODE,
  IDENTITY_RESERVED_MAX,
  IDENTITY_RESOURCE,
  IDENTITY_UNMANAGED,
  IDENTITY_WORLD,
  RESERVED_IDENTITIES,
  identityClusterId,
  identityObject,
  isClusterIdentity,
  makeIdentity,
  reservedIdentityLabels,
  type IdentityAllocator,
} from '../cluster/identity.js';
export {
  allocateIdentity,
  identitiesInUse,
  IDENTITY_TOUCH_INTERVAL_MS,
  listIdentities,
  lookupIdentity,
  lookupIdentityByLabels,
  releaseUnusedIdentities,
  type AllocateIdentityOptions,
  type IdentityList,
  type IdentityRecord,
  type IdentityStore,
  type ReleaseOptions,
  type ReleaseResult,
} from '../cluster/identity-etcd.js';

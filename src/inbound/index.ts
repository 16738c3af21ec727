/** The inbound half of the sidecar: verify the caller's token, apply rules, forward with identity headers. */
export { createInbound, createInboundParts, toInboundRequest, type InboundComponent } from './handler.js';
export type { Decision, InboundRequest, Authorizer } from './authorizer.js';
export { rejectionResponse, type RejectionResponse } from './rejection.js';

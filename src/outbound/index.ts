export { createOutbound, type OutboundDeps } from './handler.js';

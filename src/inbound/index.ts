import type { Component, ComponentDeps } from '../component.js';
import type { InboundConfig, LimitsConfig } from '../config/schema.js';

export function createInbound(_config: InboundConfig, _limits: LimitsConfig, _deps: ComponentDeps): Component {
  throw new Error('inbound is being built');
}

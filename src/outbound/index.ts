import type { Component, ComponentDeps } from '../component.js';
import type { OutboundConfig, LimitsConfig } from '../config/schema.js';

export function createOutbound(_config: OutboundConfig, _limits: LimitsConfig, _deps: ComponentDeps): Component {
  throw new Error('outbound is being built');
}

// The prom-client modules src/admin/prom-client-core.ts loads directly. prom-client publishes types for its entry
// point only; these say no more than that code relies on.
declare module 'prom-client/lib/registry.js' {
  const Registry: unknown;
  export default Registry;
}
declare module 'prom-client/lib/counter.js' {
  const Counter: unknown;
  export default Counter;
}
declare module 'prom-client/lib/gauge.js' {
  const Gauge: unknown;
  export default Gauge;
}
declare module 'prom-client/lib/histogram.js' {
  const Histogram: unknown;
  export default Histogram;
}
declare module 'prom-client/lib/defaultMetrics.js' {
  const collectDefaultMetrics: unknown;
  export default collectDefaultMetrics;
}

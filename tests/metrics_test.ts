/** `src/metrics.ts`: the exposition it renders passes the strict parser, escapes included. */
import { assertEquals, assertThrows } from "./assert.ts";
import { Registry } from "../src/metrics.ts";
import { parsePrometheusText, sampleValue } from "./prometheus.ts";

Deno.test("metrics: counters, gauges and histograms render as valid text format", () => {
  const r = new Registry();
  const c = r.counter("t_requests_total", 'help with \\ backslash\nand "quotes"', ["path"]);
  const odd = 'a"b\\c\nd';
  c.labels(odd).inc();
  c.labels(odd).inc(2);
  c.labels("plain").inc();
  r.gauge("t_open", "open things").labels().set(-3);
  const h = r.histogram("t_seconds", "latency", ["route"], [0.1, 1]);
  h.labels("x").observe(0.05);
  h.labels("x").observe(0.5);
  h.labels("x").observe(5);
  const families = parsePrometheusText(r.render());
  assertEquals(sampleValue(families, "t_requests_total", { path: odd }), 3);
  assertEquals(sampleValue(families, "t_requests_total", { path: "plain" }), 1);
  assertEquals(sampleValue(families, "t_open"), -3);
  assertEquals(families.get("t_seconds")!.samples.map((s) => [s.labels.le, s.value]), [
    ["0.1", 1],
    ["1", 2],
    ["+Inf", 3],
    [undefined, 5.55],
    [undefined, 3],
  ]);
  assertEquals(families.get("t_requests_total")!.type, "counter");
});

Deno.test("metrics: bad names and label counts are refused", () => {
  const r = new Registry();
  assertThrows(() => r.counter("1bad", "x"));
  assertThrows(() => r.counter("ok_total", "x", ["le"]));
  const c = r.counter("ok_total", "x", ["a"]);
  assertThrows(() => r.counter("ok_total", "x"), Error, "twice");
  assertThrows(() => c.labels("a", "b"));
});

Deno.test("prometheus parser: refuses what is not the text format", () => {
  const ok = "# HELP m x\n# TYPE m counter\nm 1\n";
  parsePrometheusText(ok);
  assertThrows(() => parsePrometheusText("m 1\n"), Error, "TYPE");
  assertThrows(() => parsePrometheusText(ok + "m 2\n"), Error, "repeated");
  assertThrows(() => parsePrometheusText('# HELP m x\n# TYPE m counter\nm{a="\\q"} 1\n'));
  assertThrows(() => parsePrometheusText("# HELP m x\n# TYPE m counter\nm one\n"));
  assertThrows(() =>
    parsePrometheusText(
      '# HELP h x\n# TYPE h histogram\nh_bucket{le="1"} 2\nh_bucket{le="+Inf"} 1\nh_count 1\n',
    )
  );
});

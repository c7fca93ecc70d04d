/**
 * A strict parser of the Prometheus text exposition format (0.0.4) for the
 * metrics tests: every sample must belong to a family declared by `# HELP`
 * and `# TYPE` before it, names and label values must be well-formed (only
 * `\\`, `\"` and `\n` escapes), no series may repeat, and histograms must
 * be cumulative with `+Inf` equal to `_count`. Throws on the first fault.
 *
 * @module
 */

/** One sample: its metric name (with `_bucket`/`_sum`/`_count`), labels and value. */
export interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

/** A metric family: type, help and samples. */
export interface Family {
  type: "counter" | "gauge" | "histogram" | "summary" | "untyped";
  help: string;
  samples: Sample[];
}

const NAME = /^[a-zA-Z_:][a-zA-Z0-9_:]*$/;
const LABEL = /^[a-zA-Z_][a-zA-Z0-9_]*$/;

function parseValue(text: string, line: number): number {
  if (text === "+Inf") return Infinity;
  if (text === "-Inf") return -Infinity;
  if (text === "NaN") return NaN;
  if (!/^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$/.test(text)) {
    throw new Error(`line ${line}: bad value ${JSON.stringify(text)}`);
  }
  return Number(text);
}

/** Parses `{a="x",b="y"}` starting at `text[0] === "{"`; returns labels and the rest. */
function parseLabels(text: string, line: number): { labels: Record<string, string>; rest: string } {
  const labels: Record<string, string> = {};
  let i = 1;
  const fail = (why: string) => {
    throw new Error(`line ${line}: ${why}`);
  };
  while (text[i] !== "}") {
    const eq = text.indexOf("=", i);
    if (eq < 0) fail("label without =");
    const name = text.slice(i, eq);
    if (!LABEL.test(name)) fail(`bad label name ${JSON.stringify(name)}`);
    if (name in labels) fail(`label ${name} repeated`);
    if (text[eq + 1] !== '"') fail("label value not quoted");
    let value = "";
    let j = eq + 2;
    for (;; j++) {
      const c = text[j];
      if (c === undefined) fail("unterminated label value");
      if (c === '"') break;
      if (c === "\n") fail("raw newline in label value");
      if (c === "\\") {
        const e = text[++j];
        if (e === "\\") value += "\\";
        else if (e === '"') value += '"';
        else if (e === "n") value += "\n";
        else fail(`bad escape \\${e}`);
      } else value += c;
    }
    labels[name] = value;
    i = j + 1;
    if (text[i] === ",") i++;
    else if (text[i] !== "}") fail("expected , or } after a label");
  }
  return { labels, rest: text.slice(i + 1) };
}

/** The family a sample name belongs to, given the declared families. */
function familyOf(name: string, families: Map<string, Family>): string | undefined {
  if (families.has(name)) return name;
  for (const suffix of ["_bucket", "_sum", "_count"]) {
    const base = name.slice(0, -suffix.length);
    if (name.endsWith(suffix) && families.get(base)?.type === "histogram") return base;
  }
  return undefined;
}

/** Parses and checks an exposition; returns its families by name. */
export function parsePrometheusText(text: string): Map<string, Family> {
  if (!text.endsWith("\n")) throw new Error("exposition must end with a newline");
  const families = new Map<string, Family>();
  const helps = new Map<string, string>();
  const seen = new Set<string>();
  const lines = text.slice(0, -1).split("\n");
  for (const [n, raw] of lines.entries()) {
    const line = n + 1;
    if (raw === "") continue;
    if (raw.startsWith("#")) {
      const m = /^# (HELP|TYPE) (\S+) (.*)$/.exec(raw);
      if (!m) continue; // a plain comment
      const [, kind, name, rest] = m;
      if (!NAME.test(name)) throw new Error(`line ${line}: bad metric name ${name}`);
      if (kind === "HELP") {
        if (/\\[^\\n]/.test(rest.replace(/\\\\/g, ""))) throw new Error(`line ${line}: bad escape`);
        helps.set(name, rest);
      } else {
        if (!["counter", "gauge", "histogram", "summary", "untyped"].includes(rest)) {
          throw new Error(`line ${line}: bad type ${rest}`);
        }
        if (families.has(name)) throw new Error(`line ${line}: ${name} declared twice`);
        families.set(name, {
          type: rest as Family["type"],
          help: helps.get(name) ?? "",
          samples: [],
        });
      }
      continue;
    }
    const nameEnd = raw.search(/[{ ]/);
    if (nameEnd <= 0) throw new Error(`line ${line}: no metric name`);
    const name = raw.slice(0, nameEnd);
    if (!NAME.test(name)) throw new Error(`line ${line}: bad metric name ${name}`);
    let labels: Record<string, string> = {};
    let rest = raw.slice(nameEnd);
    if (rest.startsWith("{")) ({ labels, rest } = parseLabels(rest, line));
    const parts = rest.trim().split(" ");
    if (!rest.startsWith(" ") || parts.length < 1 || parts.length > 2) {
      throw new Error(`line ${line}: expected " value [timestamp]"`);
    }
    const value = parseValue(parts[0], line);
    const family = familyOf(name, families);
    if (!family) throw new Error(`line ${line}: ${name} has no # TYPE before it`);
    if (!helps.has(family)) throw new Error(`line ${line}: ${family} has no # HELP`);
    const key = name + JSON.stringify(Object.entries(labels).sort());
    if (seen.has(key)) throw new Error(`line ${line}: series repeated: ${raw}`);
    seen.add(key);
    families.get(family)!.samples.push({ name, labels, value });
  }
  for (const [name, f] of families) if (f.type === "histogram") checkHistogram(name, f);
  return families;
}

function checkHistogram(name: string, f: Family): void {
  const series = new Map<string, { buckets: [number, number][]; count?: number }>();
  for (const s of f.samples) {
    const { le, ...rest } = s.labels;
    const key = JSON.stringify(Object.entries(rest).sort());
    const entry = series.get(key) ?? { buckets: [] };
    series.set(key, entry);
    if (s.name === `${name}_bucket`) {
      if (le === undefined) throw new Error(`${name}_bucket without le`);
      entry.buckets.push([parseValue(le, 0), s.value]);
    } else if (s.name === `${name}_count`) entry.count = s.value;
  }
  for (const [key, { buckets, count }] of series) {
    for (let i = 1; i < buckets.length; i++) {
      if (!(buckets[i][0] > buckets[i - 1][0]) || buckets[i][1] < buckets[i - 1][1]) {
        throw new Error(`${name}${key}: buckets not increasing and cumulative`);
      }
    }
    const last = buckets.at(-1);
    if (!last || last[0] !== Infinity || last[1] !== count) {
      throw new Error(`${name}${key}: +Inf bucket must equal _count`);
    }
  }
}

/** The sum of the samples `name` whose labels include `labels` (0 when there are none). */
export function sampleValue(
  families: Map<string, Family>,
  name: string,
  labels: Record<string, string> = {},
): number {
  let sum = 0;
  for (const f of families.values()) {
    for (const s of f.samples) {
      if (s.name !== name) continue;
      if (Object.entries(labels).every(([k, v]) => s.labels[k] === v)) sum += s.value;
    }
  }
  return sum;
}

/** Fetches and parses `http://<address>/metrics`, checking its Content-Type. */
export async function scrape(address: string): Promise<Map<string, Family>> {
  const res = await fetch(`http://${address}/metrics`);
  const body = await res.text();
  if (res.status !== 200) throw new Error(`/metrics: ${res.status} ${body}`);
  const type = res.headers.get("content-type") ?? "";
  if (!type.startsWith("text/plain") || !type.includes("version=0.0.4")) {
    throw new Error(`/metrics Content-Type ${type}`);
  }
  return parsePrometheusText(body);
}

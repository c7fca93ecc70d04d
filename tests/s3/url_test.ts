/**
 * `objectstore+s3://BUCKET/PREFIX?…`: what the URL, its query options and
 * the AWS environment variables configure (no server needed).
 */
import { assert, assertEquals, assertThrows } from "../assert.ts";
import { ObjectStoreBlobService } from "../../src/castore/blob/objectstore.ts";
import { objectStoreFromUrl } from "../../src/castore/objectstore/from_url.ts";
import { s3ConfigFromUrl, S3ObjectStore } from "../../src/castore/objectstore/s3.ts";
import { StorageError } from "../../src/errors.ts";

const KEYS = { AWS_ACCESS_KEY_ID: "AKID", AWS_SECRET_ACCESS_KEY: "SECRET" };

function parse(url: string, env: Record<string, string> = KEYS) {
  const inner = new URL(url.replace(/^objectstore\+/, ""));
  return s3ConfigFromUrl(inner, url, (name) => env[name]);
}

Deno.test("s3 url: bucket, prefix and AWS defaults", () => {
  const { config, prefix } = parse("objectstore+s3://my-bucket/some/prefix/");
  assertEquals(prefix, "some/prefix");
  assertEquals(config.bucket, "my-bucket");
  assertEquals(config.region, "us-east-1");
  assertEquals(config.endpoint.href, "https://s3.us-east-1.amazonaws.com/");
  assertEquals(config.virtualHosted, true);
  assertEquals(config.credentials, {
    accessKeyId: "AKID",
    secretAccessKey: "SECRET",
    sessionToken: undefined,
  });
  assertEquals(parse("objectstore+s3://b.with.dots").config.virtualHosted, false);
  assertEquals(parse("objectstore+s3://bucket").prefix, "");
});

Deno.test("s3 url: the environment supplies endpoint, region and session token", () => {
  const env = {
    ...KEYS,
    AWS_ENDPOINT_URL: "http://127.0.0.1:7480",
    AWS_DEFAULT_REGION: "eu-west-1",
    AWS_SESSION_TOKEN: "TOKEN",
  };
  const { config } = parse("objectstore+s3://bucket/p", env);
  assertEquals(config.endpoint.href, "http://127.0.0.1:7480/");
  assertEquals(config.region, "eu-west-1");
  assertEquals(config.virtualHosted, false, "path style for a self-hosted endpoint");
  assertEquals(config.credentials.sessionToken, "TOKEN");
  // The S3-specific endpoint variable and AWS_REGION win over the general ones.
  const specific = parse("objectstore+s3://bucket", {
    ...env,
    AWS_ENDPOINT_URL_S3: "https://s3.example.org",
    AWS_REGION: "ap-south-1",
  }).config;
  assertEquals(specific.endpoint.origin, "https://s3.example.org");
  assertEquals(specific.region, "ap-south-1");
});

Deno.test("s3 url: query options override the environment", () => {
  const env = { ...KEYS, AWS_ENDPOINT_URL: "http://env:1", AWS_REGION: "env-region" };
  const { config } = parse(
    "objectstore+s3://bucket/p?endpoint=https%3A%2F%2Fminio.local%3A9000&region=us-west-2" +
      "&virtual_hosted_style_request=true&timeout=2.5&max_requests=8",
    env,
  );
  assertEquals(config.endpoint.origin, "https://minio.local:9000");
  assertEquals(config.region, "us-west-2");
  assertEquals(config.virtualHosted, true);
  assertEquals(config.timeoutMs, 2500);
  assertEquals(config.maxRequests, 8);
  // Upstream's aliases.
  const aliases = parse(
    "objectstore+s3://bucket?aws_endpoint_url=http://h:2&aws_region=r1" +
      "&aws_virtual_hosted_style_request=false",
  ).config;
  assertEquals(aliases.endpoint.origin, "http://h:2");
  assertEquals(aliases.region, "r1");
  assertEquals(aliases.virtualHosted, false);
});

Deno.test("s3 url: mistakes are one clear StorageError", () => {
  const cases: [string, Record<string, string>, string][] = [
    ["objectstore+s3://bucket", {}, "no S3 credentials"],
    ["objectstore+s3://bucket?secret_access_key=x", KEYS, "do not belong in the URL"],
    ["objectstore+s3://bucket?aws_access_key_id=x", KEYS, "do not belong in the URL"],
    ["objectstore+s3://bucket?colour=blue", KEYS, "unknown S3 option colour"],
    ["objectstore+s3://bucket?endpoint=ftp://x", KEYS, "must be http:// or https://"],
    ["objectstore+s3://bucket?endpoint=not a url", KEYS, "invalid S3 endpoint"],
    ["objectstore+s3://bucket?endpoint=http://u:p@h", KEYS, "only scheme, host"],
    ["objectstore+s3://bucket?timeout=0", KEYS, "timeout must be"],
    ["objectstore+s3://bucket?virtual_hosted_style_request=maybe", KEYS, "true or false"],
    ["objectstore+s3://bucket?region=a/b", KEYS, "invalid S3 region"],
    ["objectstore+s3://bucket/a//c", KEYS, "invalid key prefix"],
    ["objectstore+s3://bucket/a%00b", KEYS, "invalid key prefix"],
    ["objectstore+s3://bucket:80/p", KEYS, "invalid S3 bucket"],
    ["objectstore+s3:///p", KEYS, "invalid S3 bucket"],
  ];
  for (const [url, env, message] of cases) {
    assertThrows(() => parse(url, env), StorageError, message);
  }
});

Deno.test("s3 url: objectStoreFromUrl builds an S3 store without contacting it", () => {
  const before = { ...Deno.env.toObject() };
  Deno.env.set("AWS_ACCESS_KEY_ID", "AKID");
  Deno.env.set("AWS_SECRET_ACCESS_KEY", "SECRET");
  try {
    const store = objectStoreFromUrl("objectstore+s3://bucket/pre/fix?endpoint=http://127.0.0.1:1");
    assert(store instanceof S3ObjectStore);
    assertEquals(store.description, "s3://bucket/pre/fix/ at http://127.0.0.1:1");
    assertEquals(store.tuning, {
      maxInflightChunks: 64,
      maxInflightBytes: 32 * 1024 * 1024,
      readAhead: 16,
      remote: true,
    });
  } finally {
    for (const k of ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"]) {
      if (before[k] === undefined) Deno.env.delete(k);
      else Deno.env.set(k, before[k]);
    }
  }
});

Deno.test("s3 url: blobs on S3 count as remote, blobs in a directory do not", async () => {
  const before = { ...Deno.env.toObject() };
  Deno.env.set("AWS_ACCESS_KEY_ID", "AKID");
  Deno.env.set("AWS_SECRET_ACCESS_KEY", "SECRET");
  const dir = await Deno.makeTempDir({ prefix: "s3-url-test-" });
  try {
    const s3 = new ObjectStoreBlobService(
      objectStoreFromUrl("objectstore+s3://bucket?endpoint=http://127.0.0.1:1"),
    );
    const file = new ObjectStoreBlobService(objectStoreFromUrl(`objectstore+file://${dir}`));
    try {
      assertEquals(s3.remote, true);
      assertEquals(file.remote, false);
    } finally {
      await s3.close();
      await file.close();
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
    for (const k of ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"]) {
      if (before[k] === undefined) Deno.env.delete(k);
      else Deno.env.set(k, before[k]);
    }
  }
});

/**
 * The S3 client's listing against a server that breaks ListObjectsV2's
 * paging rules: a page marked truncated without a continuation token must
 * fail the listing, not end it (gc would take what the rest names for
 * garbage). No real server does this on purpose, so a small HTTP server
 * of our own plays it.
 */
import { assertEquals, assertRejects } from "../assert.ts";
import { S3Client } from "../../src/castore/objectstore/s3_client.ts";
import { StorageError } from "../../src/errors.ts";

function page(keys: string[], truncated: boolean, token?: string): string {
  const contents = keys.map((k) =>
    `<Contents><Key>${k}</Key><Size>1</Size><LastModified>2026-01-01T00:00:00.000Z</LastModified></Contents>`
  ).join("");
  return `<?xml version="1.0"?><ListBucketResult>${contents}<IsTruncated>${truncated}</IsTruncated>${
    token ? `<NextContinuationToken>${token}</NextContinuationToken>` : ""
  }</ListBucketResult>`;
}

Deno.test("S3 listing: pages are followed by token; a truncated page without one fails", async () => {
  let withToken = true;
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen: () => {} }, (req) => {
    const token = new URL(req.url).searchParams.get("continuation-token");
    if (token === "next") return new Response(page(["b"], false));
    return new Response(page(["a"], true, withToken ? "next" : undefined));
  });
  try {
    const client = new S3Client({
      endpoint: new URL(`http://127.0.0.1:${server.addr.port}`),
      bucket: "bucket",
      region: "us-east-1",
      credentials: { accessKeyId: "k", secretAccessKey: "s" },
    });
    assertEquals((await client.listObjects("")).map((o) => o.key), ["a", "b"]);
    withToken = false;
    await assertRejects(() => client.listObjects(""), StorageError, "continuation token");
  } finally {
    await server.shutdown();
  }
});

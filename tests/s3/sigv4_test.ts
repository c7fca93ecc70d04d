/**
 * SigV4 against the worked examples of the S3 API reference
 * ("Signature Calculations for the Authorization Header"), which use the
 * documentation's example key pair and the date 2013-05-24.
 */
import { assertEquals } from "../assert.ts";
import {
  canonicalQuery,
  EMPTY_SHA256,
  sha256Hex,
  SigV4Signer,
  uriEncode,
} from "../../src/castore/objectstore/sigv4.ts";

const signer = new SigV4Signer({
  accessKeyId: "AKIAIOSFODNN7EXAMPLE",
  secretAccessKey: "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
});
const date = new Date(Date.UTC(2013, 4, 24));
const host = "examplebucket.s3.amazonaws.com";
const credential = "AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request";

Deno.test("sigv4: GET object with a range", () => {
  const headers = signer.sign({
    method: "GET",
    path: "/test.txt",
    query: "",
    headers: { host, range: "bytes=0-9" },
    payloadHash: EMPTY_SHA256,
    region: "us-east-1",
    date,
  });
  assertEquals(headers["x-amz-date"], "20130524T000000Z");
  assertEquals(
    headers.authorization,
    `AWS4-HMAC-SHA256 Credential=${credential}, ` +
      "SignedHeaders=host;range;x-amz-content-sha256;x-amz-date, " +
      "Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41",
  );
});

Deno.test("sigv4: PUT object with a signed payload and an encoded key", () => {
  const body = new TextEncoder().encode("Welcome to Amazon S3.");
  const payloadHash = sha256Hex(body);
  assertEquals(payloadHash, "44ce7dd67c959e0d3524ffac1771dfbba87d2b6b4b4e99e42034a8b803f8b072");
  const headers = signer.sign({
    method: "PUT",
    path: `/${uriEncode("test$file.text", true)}`,
    query: "",
    headers: {
      host,
      date: "Fri, 24 May 2013 00:00:00 GMT",
      "x-amz-storage-class": "REDUCED_REDUNDANCY",
    },
    payloadHash,
    region: "us-east-1",
    date,
  });
  assertEquals(
    headers.authorization,
    `AWS4-HMAC-SHA256 Credential=${credential}, ` +
      "SignedHeaders=date;host;x-amz-content-sha256;x-amz-date;x-amz-storage-class, " +
      "Signature=98ad721746da40c64f1a55b78f14c238d841ea1380cd77a1b5971af0ece108bd",
  );
});

Deno.test("sigv4: GET bucket with query parameters", () => {
  const sign = (query: string) =>
    signer.sign({
      method: "GET",
      path: "/",
      query,
      headers: { host },
      payloadHash: EMPTY_SHA256,
      region: "us-east-1",
      date,
    }).authorization;
  assertEquals(canonicalQuery({ prefix: "J", "max-keys": "2" }), "max-keys=2&prefix=J");
  assertEquals(
    sign(canonicalQuery({ prefix: "J", "max-keys": "2" })),
    `AWS4-HMAC-SHA256 Credential=${credential}, ` +
      "SignedHeaders=host;x-amz-content-sha256;x-amz-date, " +
      "Signature=34b48302e7b5fa45bde8084f4b7868a86f0a534bc59db6670ed5711ef69dc6f7",
  );
  assertEquals(
    sign(canonicalQuery({ lifecycle: "" })),
    `AWS4-HMAC-SHA256 Credential=${credential}, ` +
      "SignedHeaders=host;x-amz-content-sha256;x-amz-date, " +
      "Signature=fea454ca298b7da1c68078a5d1bdbfbbe0d65c699e0f91ac7a200a0136783543",
  );
});

Deno.test("sigv4: URI encoding and the session token", () => {
  assertEquals(uriEncode("a b/c~d_e.f-g"), "a%20b%2Fc~d_e.f-g");
  assertEquals(uriEncode("a b/c", true), "a%20b/c");
  assertEquals(uriEncode("ü*+="), "%C3%BC%2A%2B%3D");
  assertEquals(
    canonicalQuery({ b: "2", a: "x y", "continuation-token": "1/+=" }),
    "a=x%20y&b=2&continuation-token=1%2F%2B%3D",
  );
  const headers = new SigV4Signer({
    accessKeyId: "A",
    secretAccessKey: "S",
    sessionToken: "TOKEN",
  }).sign({
    method: "HEAD",
    path: "/b",
    query: "",
    headers: { host },
    payloadHash: EMPTY_SHA256,
    region: "eu-west-1",
    date,
  });
  assertEquals(headers["x-amz-security-token"], "TOKEN");
  assertEquals(
    /SignedHeaders=([^,]*)/.exec(headers.authorization)![1],
    "host;x-amz-content-sha256;x-amz-date;x-amz-security-token",
  );
});

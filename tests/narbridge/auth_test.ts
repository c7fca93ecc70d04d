/**
 * Token rules of the binary cache (`src/narbridge/auth.ts`): which token
 * each request needs, for every combination of configured token files.
 */
import { AccessControl, presentedToken } from "../../src/narbridge/auth.ts";
import { assertEquals } from "../assert.ts";

const bearer = (t: string) => `Bearer ${t}`;
const basic = (t: string) => `Basic ${btoa(`nix:${t}`)}`;

Deno.test("auth: no tokens configured, everything is open", () => {
  const ac = new AccessControl({});
  assertEquals(ac.enabled, false);
  assertEquals(ac.check("GET", undefined), "allowed");
  assertEquals(ac.check("PUT", undefined), "allowed");
});

Deno.test("auth: upload tokens close writes only", () => {
  const ac = new AccessControl({ upload: ["up"] });
  assertEquals(ac.check("GET", undefined), "allowed");
  assertEquals(ac.check("PUT", undefined), "unauthorized");
  assertEquals(ac.check("PUT", bearer("nope")), "unauthorized");
  assertEquals(ac.check("PUT", bearer("up")), "allowed");
  assertEquals(ac.check("PUT", basic("up")), "allowed");
});

Deno.test("auth: read tokens alone close writes too (no anonymous uploads)", () => {
  const ac = new AccessControl({ read: ["rd"] });
  assertEquals(ac.check("GET", undefined), "unauthorized");
  assertEquals(ac.check("HEAD", bearer("rd")), "allowed");
  assertEquals(ac.check("PUT", undefined), "unauthorized");
  assertEquals(ac.check("PUT", bearer("rd")), "allowed");
});

Deno.test("auth: with both, a read token does not upload, an upload token reads", () => {
  const ac = new AccessControl({ upload: ["up"], read: ["rd"] });
  assertEquals(ac.check("PUT", bearer("rd")), "unauthorized");
  assertEquals(ac.check("PUT", basic("up")), "allowed");
  assertEquals(ac.check("GET", basic("up")), "allowed");
  assertEquals(ac.check("GET", basic("rd")), "allowed");
});

Deno.test("auth: presented tokens from Bearer and Basic, malformed headers give none", () => {
  assertEquals(presentedToken("Bearer abc"), "abc");
  assertEquals(presentedToken(basic("p:w")), "p:w");
  assertEquals(presentedToken("Basic !!!"), undefined);
  assertEquals(presentedToken(`Basic ${btoa("nocolon")}`), undefined);
  assertEquals(presentedToken("Digest x"), undefined);
  assertEquals(presentedToken(undefined), undefined);
});

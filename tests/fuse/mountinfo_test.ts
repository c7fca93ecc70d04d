import { assertEquals } from "../assert.ts";
import { mountAt, parseMountInfo, readaheadFile } from "../../src/fuse/mountinfo.ts";

const SAMPLE = [
  "22 1 253:0 / / rw,relatime shared:1 - ext4 /dev/vda rw",
  "36 22 0:31 / /tmp/a\\040b rw,nosuid - fuse tvix-store ro,user_id=0,group_id=0",
  "37 22 0:32 / /mnt/x rw master:1 shared:7 - fuse.sshfs host:/dir rw",
  "38 22 0:33 / /mnt/x rw - tmpfs tmpfs rw",
  "garbage",
  "",
].join("\n");

Deno.test("mountinfo: fields, escapes and optional fields", () => {
  assertEquals(parseMountInfo(SAMPLE), [
    { device: "253:0", mountPoint: "/", fsType: "ext4", source: "/dev/vda" },
    { device: "0:31", mountPoint: "/tmp/a b", fsType: "fuse", source: "tvix-store" },
    { device: "0:32", mountPoint: "/mnt/x", fsType: "fuse.sshfs", source: "host:/dir" },
    { device: "0:33", mountPoint: "/mnt/x", fsType: "tmpfs", source: "tmpfs" },
  ]);
});

Deno.test("mountinfo: a mount's readahead lives in sysfs under its device", () => {
  assertEquals(
    readaheadFile({ device: "0:31", mountPoint: "/m", fsType: "fuse", source: "tvix-store" }),
    "/sys/class/bdi/0:31/read_ahead_kb",
  );
});

Deno.test("mountinfo: this process's root is mounted; a plain directory is not", () => {
  assertEquals(typeof mountAt("/")?.device, "string");
  const dir = Deno.makeTempDirSync();
  try {
    assertEquals(mountAt(dir), undefined);
  } finally {
    Deno.removeSync(dir);
  }
});

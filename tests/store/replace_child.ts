/**
 * Child process for stat_cache_test.ts, run without FFI: imports a tree
 * whose file is replaced while the import runs (`replaceDuringImport`) and
 * prints the import's error.
 *
 * Usage: deno run [perms without --allow-ffi] replace_child.ts TMP KIND
 */
import { replaceDuringImport } from "./hooked_services.ts";

console.log(await replaceDuringImport(Deno.args[0], Deno.args[1]));

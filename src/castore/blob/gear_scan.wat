;; FastCDC 2020 cut-point search ("rolling two bytes each time"), the hot
;; loop of src/castore/blob/fastcdc.ts. Assembled into gear_scan_wasm.ts by
;; `deno task wasm`; fastcdc.ts documents the algorithm.
;;
;; Memory layout, filled by the caller:
;;   0    .. 2048  GEAR[256]    (u64 little-endian)
;;   2048 .. 4096  GEAR_LS[256] (GEAR << 1)
;;   4096 ..       the bytes to scan
;;
;; scan(from, small_end, end, mask_s, mask_s_ls, mask_l, mask_l_ls) hashes
;; byte pairs at addresses from, from + 2, ... with the small masks below
;; small_end and the large masks below end, starting from hash 0. It returns
;; the address the chunk ends at (before the byte that matched the shifted
;; mask, or after the one that matched the plain mask), or -1 without a match.
(module
  (memory (export "memory") 1)
  (func (export "scan")
    (param $a i32) (param $small_end i32) (param $end i32)
    (param $ms i64) (param $msls i64) (param $ml i64) (param $mlls i64)
    (result i32)
    (local $h i64)
    (block $small_done
      (loop $small
        (br_if $small_done (i32.ge_u (local.get $a) (local.get $small_end)))
        (local.set $h (i64.add (i64.shl (local.get $h) (i64.const 2))
          (i64.load offset=2048 (i32.shl (i32.load8_u (local.get $a)) (i32.const 3)))))
        (if (i64.eqz (i64.and (local.get $h) (local.get $msls)))
          (then (return (local.get $a))))
        (local.set $h (i64.add (local.get $h)
          (i64.load (i32.shl (i32.load8_u offset=1 (local.get $a)) (i32.const 3)))))
        (if (i64.eqz (i64.and (local.get $h) (local.get $ms)))
          (then (return (i32.add (local.get $a) (i32.const 1)))))
        (local.set $a (i32.add (local.get $a) (i32.const 2)))
        (br $small)))
    (block $large_done
      (loop $large
        (br_if $large_done (i32.ge_u (local.get $a) (local.get $end)))
        (local.set $h (i64.add (i64.shl (local.get $h) (i64.const 2))
          (i64.load offset=2048 (i32.shl (i32.load8_u (local.get $a)) (i32.const 3)))))
        (if (i64.eqz (i64.and (local.get $h) (local.get $mlls)))
          (then (return (local.get $a))))
        (local.set $h (i64.add (local.get $h)
          (i64.load (i32.shl (i32.load8_u offset=1 (local.get $a)) (i32.const 3)))))
        (if (i64.eqz (i64.and (local.get $h) (local.get $ml)))
          (then (return (i32.add (local.get $a) (i32.const 1)))))
        (local.set $a (i32.add (local.get $a) (i32.const 2)))
        (br $large)))
    (i32.const -1)))

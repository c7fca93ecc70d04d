const t0 = performance.now();
for (const m of Deno.args) {
  const t = performance.now();
  await import(m);
  console.log(`${m.padEnd(45)} +${(performance.now() - t).toFixed(1)} ms`);
}
console.log(`total ${(performance.now() - t0).toFixed(1)}`);

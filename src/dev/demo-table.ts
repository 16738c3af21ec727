import type { ScenarioResult } from './demo-scenarios.js';

/** Narrowest "why" column worth drawing; below it the results are printed as a list. */
const MIN_WHY = 36;

/**
 * Renders the demo's results as a box table, wrapping the "why" column to
 * fit `width` columns (default 150); on a terminal too narrow for that, as
 * an indented list.
 */
export function renderTable(results: readonly ScenarioResult[], width = 150): string {
  const head = ['#', 'scenario', 'expected', 'got', 'why'];
  const rows = results.map((r, i) => [String(i + 1), r.title, r.expected, `${r.passed ? '✓' : '✗'} ${r.got}`, r.why]);
  const widths = head.map((h, c) => Math.max(h.length, ...rows.map((r) => (c === 4 ? 0 : r[c]!.length))));
  // Borders and padding take 3 columns per cell plus one.
  const fixed = widths.slice(0, 4).reduce((a, b) => a + b, 0) + 3 * 5 + 1;
  if (width - fixed < MIN_WHY) return renderList(results, width);
  widths[4] = width - fixed;
  const line = (l: string, m: string, r: string) => `${l}${widths.map((w) => '─'.repeat(w + 2)).join(m)}${r}`;
  const cells = (values: string[][]) => {
    const height = Math.max(...values.map((v) => v.length));
    const out: string[] = [];
    for (let i = 0; i < height; i++) out.push(`│${values.map((v, c) => ` ${(v[i] ?? '').padEnd(widths[c]!)} `).join('│')}│`);
    return out;
  };
  const out = [line('┌', '┬', '┐'), ...cells(head.map((h) => [h])), line('├', '┼', '┤')];
  rows.forEach((r, i) => {
    out.push(...cells(r.map((v, c) => (c === 4 ? wrap(v, widths[4]!) : [v]))));
    if (i < rows.length - 1) out.push(line('├', '┼', '┤'));
  });
  out.push(line('└', '┴', '┘'));
  return out.join('\n');
}

function renderList(results: readonly ScenarioResult[], width: number): string {
  const out: string[] = [];
  results.forEach((r, i) => {
    out.push(`${String(i + 1).padStart(2)}. ${r.passed ? '✓' : '✗'} ${r.title}: expected ${r.expected}, got ${r.got}`);
    for (const line of wrap(r.why, Math.max(20, width - 7))) out.push(`       ${line}`);
  });
  return out.join('\n');
}

function wrap(text: string, width: number): string[] {
  const lines: string[] = [];
  let current = '';
  for (const word of text.split(' ')) {
    if (current && current.length + 1 + word.length > width) {
      lines.push(current);
      current = '';
    }
    // A single word longer than the column is cut, so the table never breaks.
    let w = word;
    while (w.length > width) {
      lines.push(w.slice(0, width));
      w = w.slice(width);
    }
    current = current ? `${current} ${w}` : w;
  }
  if (current) lines.push(current);
  return lines.length ? lines : [''];
}

// A small force-directed layout (no library): nodes repel (Coulomb), edges pull (Hooke), a weak
// pull to the centre keeps disconnected parts in view; the step shrinks as the layout cools.
export function layout(nodes, edges, width, height, iterations = 300) {
  const n = nodes.length;
  const pos = nodes.map((_, i) => {
    const angle = (2 * Math.PI * i) / Math.max(n, 1);  // deterministic start: a circle
    return { x: width / 2 + (width / 3) * Math.cos(angle), y: height / 2 + (height / 3) * Math.sin(angle) };
  });
  if (n === 0) return pos;
  const index = new Map(nodes.map((node, i) => [node.id, i]));
  const links = edges.map((e) => [index.get(e.source), index.get(e.target)]).filter(([a, b]) => a !== undefined && b !== undefined && a !== b);
  const ideal = Math.sqrt((width * height) / n) * 0.6;
  let step = Math.min(width, height) / 10;
  for (let it = 0; it < iterations; it++) {
    const force = pos.map(() => ({ x: 0, y: 0 }));
    for (let i = 0; i < n; i++) {
      for (let j = i + 1; j < n; j++) {
        let dx = pos[i].x - pos[j].x, dy = pos[i].y - pos[j].y;
        let d2 = dx * dx + dy * dy;
        if (d2 < 0.01) { dx = 0.1 * (i - j); dy = 0.1; d2 = dx * dx + dy * dy; }
        const f = (ideal * ideal) / d2;
        force[i].x += dx * f; force[i].y += dy * f;
        force[j].x -= dx * f; force[j].y -= dy * f;
      }
    }
    for (const [a, b] of links) {
      const dx = pos[a].x - pos[b].x, dy = pos[a].y - pos[b].y;
      const d = Math.sqrt(dx * dx + dy * dy) || 0.01;
      const f = d / ideal;
      force[a].x -= dx * f; force[a].y -= dy * f;
      force[b].x += dx * f; force[b].y += dy * f;
    }
    for (let i = 0; i < n; i++) {
      force[i].x += (width / 2 - pos[i].x) * 0.05;
      force[i].y += (height / 2 - pos[i].y) * 0.05;
      const len = Math.sqrt(force[i].x ** 2 + force[i].y ** 2) || 1;
      const move = Math.min(len, step);
      pos[i].x = Math.min(width - 30, Math.max(30, pos[i].x + (force[i].x / len) * move));
      pos[i].y = Math.min(height - 20, Math.max(20, pos[i].y + (force[i].y / len) * move));
    }
    step *= 0.98;
  }
  return pos;
}

// Small DOM helpers: every text goes in through textContent, never as HTML.
export const $ = (selector) => document.querySelector(selector);

export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "class") node.className = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value);
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

const SVG_NS = "http://www.w3.org/2000/svg";
export function svg(tag, attrs = {}, text) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, value);
  if (text !== undefined) node.textContent = text;
  return node;
}

export function clear(node) { node.replaceChildren(); return node; }

export function when(unix) { return new Date(unix * 1000).toISOString().replace("T", " ").slice(0, 19); }

export function describe(error) {
  const reason = error.data && error.data.reason ? ` (${error.data.reason})` : "";
  return `${error.message}${reason}`;
}

// Building DOM nodes from data. Every value goes in as text (textContent) or as an attribute
// set through the DOM: never as HTML, so a message value like "<script>" shows as text.

/**
 * An element: `el('div', { class: 'card', text: title, data: { msgid } }, child, ...)`.
 * `text` sets textContent; `data` sets data-* attributes; other keys are attributes.
 */
export function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  return fill(node, props, children);
}

const SVG_NS = 'http://www.w3.org/2000/svg';

/** An SVG element, with attributes. */
export function svg(tag, attrs = {}, ...children) {
  return fill(document.createElementNS(SVG_NS, tag), attrs, children);
}

function fill(node, props, children) {
  for (const [key, value] of Object.entries(props)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === 'text') {
      node.textContent = String(value);
    } else if (key === 'data') {
      for (const [name, datum] of Object.entries(value)) {
        if (datum !== undefined && datum !== null) node.dataset[name] = String(datum);
      }
    } else {
      node.setAttribute(key, value === true ? '' : String(value));
    }
  }
  for (const child of children) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

/** Replaces the children of `node`. */
export function replaceChildren(node, children) {
  node.replaceChildren(...children.filter((child) => child));
}

/** A time the way the phone shows it: the time of day today, the date and time before. */
export function formatTime(unixMs) {
  const date = new Date(Number(unixMs));
  const two = (n) => String(n).padStart(2, '0');
  const time = `${two(date.getHours())}:${two(date.getMinutes())}:${two(date.getSeconds())}`;
  const today = new Date();
  if (date.toDateString() === today.toDateString()) return time;
  const day = `${date.getMonth() + 1}月${date.getDate()}日`;
  return date.getFullYear() === today.getFullYear() ? `${day} ${time}` : `${date.getFullYear()}年${day} ${time}`;
}

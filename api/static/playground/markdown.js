// A small Markdown renderer that builds DOM nodes and never parses HTML: every character of
// model output ends up in a text node (or an attribute we set ourselves), so an answer holding
// <script> or <img onerror=…> shows as those characters. Covered: fenced code, headings,
// lists, block quotes, rules, paragraphs with line breaks, `code`, **bold**, *italic*, and
// [links](https://…) whose scheme is http, https or mailto (anything else stays text).

const INLINE = /(`+)([\s\S]*?[^`])\1(?!`)|\*\*(.+?)\*\*|__(.+?)__|\*(?!\s)(.+?)\*|_(?!\s)(.+?)_\b|\[([^\]\n]+)\]\(([^)\s]+)\)/g;
const SAFE_SCHEMES = new Set(["http:", "https:", "mailto:"]);

function el(tag, ...children) {
  const node = document.createElement(tag);
  for (const child of children) node.append(child);
  return node;
}

function safeHref(raw) {
  try {
    const url = new URL(raw, window.location.href);
    return SAFE_SCHEMES.has(url.protocol) ? url.href : null;
  } catch {
    return null;
  }
}

export function inline(text) {
  const out = document.createDocumentFragment();
  let last = 0;
  for (const m of text.matchAll(INLINE)) {
    out.append(text.slice(last, m.index));
    last = m.index + m[0].length;
    if (m[1]) out.append(el("code", m[2]));
    else if (m[3] || m[4]) out.append(el("strong", inline(m[3] || m[4])));
    else if (m[5] || m[6]) out.append(el("em", inline(m[5] || m[6])));
    else {
      const href = safeHref(m[8]);
      if (href) {
        const a = el("a", inline(m[7]));
        a.href = href;
        a.target = "_blank";
        a.rel = "noopener noreferrer";
        out.append(a);
      } else out.append(m[0]);
    }
  }
  out.append(text.slice(last));
  return out;
}

function paragraph(lines) {
  const p = el("p");
  lines.forEach((line, i) => {
    if (i) p.append(el("br"));
    p.append(inline(line));
  });
  return p;
}

export function render(text) {
  const out = document.createDocumentFragment();
  const lines = text.replace(/\r\n/g, "\n").split("\n");
  let para = [];
  const flush = () => {
    if (para.length) out.append(paragraph(para));
    para = [];
  };
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i];
    const fence = line.match(/^\s*(```+|~~~+)\s*([\w+-]*)/);
    if (fence) {
      flush();
      const body = [];
      for (i++; i < lines.length && !lines[i].trim().startsWith(fence[1]); i++) body.push(lines[i]);
      const code = el("code", body.join("\n"));
      if (fence[2]) code.className = `language-${fence[2]}`;
      out.append(el("pre", code));
      continue;
    }
    const heading = line.match(/^(#{1,6})\s+(.*)$/);
    if (heading) {
      flush();
      out.append(el(`h${Math.min(heading[1].length + 2, 6)}`, inline(heading[2])));
      continue;
    }
    if (/^\s*([-*_])(\s*\1){2,}\s*$/.test(line)) {
      flush();
      out.append(el("hr"));
      continue;
    }
    const item = line.match(/^\s*([-*+]|\d+[.)])\s+(.*)$/);
    if (item) {
      flush();
      const ordered = /\d/.test(item[1]);
      const list = el(ordered ? "ol" : "ul");
      for (; i < lines.length; i++) {
        const next = lines[i].match(/^\s*([-*+]|\d+[.)])\s+(.*)$/);
        if (!next || /\d/.test(next[1]) !== ordered) break;
        list.append(el("li", inline(next[2])));
      }
      i--;
      out.append(list);
      continue;
    }
    const quote = line.match(/^>\s?(.*)$/);
    if (quote) {
      flush();
      const quoted = [];
      for (; i < lines.length && lines[i].startsWith(">"); i++) quoted.push(lines[i].replace(/^>\s?/, ""));
      i--;
      out.append(el("blockquote", render(quoted.join("\n"))));
      continue;
    }
    if (!line.trim()) flush();
    else para.push(line);
  }
  flush();
  return out;
}

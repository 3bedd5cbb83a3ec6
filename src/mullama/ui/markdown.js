// Safe Markdown: the text is parsed into DOM nodes made with createElement and
// textContent only, so HTML in a model's output is shown as text and never runs.
// Covers what chat replies use: fenced code blocks (also unterminated, while streaming),
// inline code, bold, italics, bullet and numbered lists, headings and paragraphs.

const FENCE = /^\s*(```|~~~)\s*([\w+#.-]*)\s*$/;
const BULLET = /^\s*[-*+]\s+(.*)$/;
const NUMBERED = /^\s*(\d{1,9})[.)]\s+(.*)$/;
const HEADING = /^(#{1,6})\s+(.*)$/;
const INLINE = /(`+)([\s\S]*?[^`])\1(?!`)|\*\*(?=\S)([\s\S]*?\S)\*\*|(?<!\w)__(?=\S)([\s\S]*?\S)__(?!\w)|\*(?=[^\s*])([^*]*?[^\s*])\*|(?<![\w])_(?=[^\s_])([^_]*?[^\s_])_(?![\w])/g;

export function inline(text, parent) {
  let last = 0;
  for (const m of text.matchAll(INLINE)) {
    if (m.index > last) parent.append(document.createTextNode(text.slice(last, m.index)));
    if (m[2] !== undefined) {
      const code = document.createElement("code");
      code.textContent = m[2];
      parent.append(code);
    } else {
      const strong = m[3] !== undefined || m[4] !== undefined;
      const node = document.createElement(strong ? "strong" : "em");
      inline(m[3] ?? m[4] ?? m[5] ?? m[6], node);
      parent.append(node);
    }
    last = m.index + m[0].length;
  }
  if (last < text.length) parent.append(document.createTextNode(text.slice(last)));
}

export function render(text, container) {
  container.replaceChildren();
  const lines = text.split("\n");
  let para = null;
  let list = null;
  const closeBlocks = () => {
    para = null;
    list = null;
  };
  for (let i = 0; i < lines.length; i += 1) {
    const line = lines[i];
    const fence = line.match(FENCE);
    if (fence) {
      closeBlocks();
      const body = [];
      let j = i + 1;
      while (j < lines.length && !(lines[j].trim().startsWith(fence[1]) && lines[j].trim().replace(/[`~]/g, "") === "")) {
        body.push(lines[j]);
        j += 1;
      }
      const pre = document.createElement("pre");
      const code = document.createElement("code");
      if (fence[2]) code.dataset.lang = fence[2];
      code.textContent = body.join("\n");
      pre.append(code);
      container.append(pre);
      i = j;
      continue;
    }
    if (line.trim() === "") {
      closeBlocks();
      continue;
    }
    const heading = line.match(HEADING);
    if (heading) {
      closeBlocks();
      const h = document.createElement(`h${Math.min(heading[1].length + 2, 6)}`);
      inline(heading[2], h);
      container.append(h);
      continue;
    }
    const bullet = line.match(BULLET);
    const numbered = bullet ? null : line.match(NUMBERED);
    if (bullet || numbered) {
      const tag = bullet ? "UL" : "OL";
      if (!list || list.tagName !== tag) {
        para = null;
        list = document.createElement(tag.toLowerCase());
        if (numbered && numbered[1] !== "1") list.start = Number(numbered[1]);
        container.append(list);
      }
      const item = document.createElement("li");
      inline(bullet ? bullet[1] : numbered[2], item);
      list.append(item);
      continue;
    }
    if (list && /^\s+\S/.test(line)) {
      // a continuation line of the last item
      inline(` ${line.trim()}`, list.lastElementChild);
      continue;
    }
    list = null;
    if (!para) {
      para = document.createElement("p");
      container.append(para);
    } else {
      para.append(document.createElement("br"));
    }
    inline(line, para);
  }
}

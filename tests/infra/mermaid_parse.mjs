// Parse every ```mermaid block of the Markdown files given as arguments with Mermaid's own
// parser (jsdom stands in for the browser). Exit 1 and name the block on a parse error.
import { readFileSync } from "node:fs";
import { JSDOM } from "jsdom";

const dom = new JSDOM("<!doctype html><html><body></body></html>");
globalThis.window = dom.window;
globalThis.document = dom.window.document;
const { default: mermaid } = await import("mermaid");

for (const path of process.argv.slice(2)) {
  const blocks = [...readFileSync(path, "utf8").matchAll(/```mermaid\n([\s\S]*?)```/g)];
  if (blocks.length === 0) {
    console.error(`${path}: no mermaid block`);
    process.exitCode = 1;
  }
  for (const [index, [, text]] of blocks.entries()) {
    try {
      const { diagramType } = await mermaid.parse(text);
      console.log(`${path} block ${index + 1}: ${diagramType}`);
    } catch (error) {
      console.error(`${path} block ${index + 1}: ${error.message}`);
      process.exitCode = 1;
    }
  }
}

"""The report's stylesheet, inlined into the HTML: readable on a laptop, clean on paper."""

STYLESHEET = """
:root { --ink: #1d2733; --muted: #5f6b7a; --line: #dde3ea; --panel: #f6f8fa; --accent: #1f5fa8;
  --achieved: #1a7f37; --on-track: #2f81f7; --at-risk: #bf8700; --off-track: #cf222e;
  --not-started: #8c959f; --met: #1a7f37; --missed: #cf222e; }
* { box-sizing: border-box; }
body { margin: 0; color: var(--ink); background: #fff; font: 15px/1.5 -apple-system, "Segoe UI",
  "Helvetica Neue", Arial, "Noto Sans", "DejaVu Sans", sans-serif; }
main { max-width: 1080px; margin: 0 auto; padding: 32px 28px 48px; }
h1 { font-size: 34px; margin: 0; letter-spacing: -0.5px; }
h2 { font-size: 21px; margin: 36px 0 6px; padding-bottom: 6px; border-bottom: 2px solid var(--line); }
h3 { font-size: 16px; margin: 20px 0 8px; display: flex; gap: 8px; align-items: center; flex-wrap: wrap; }
code { font: 12.5px/1.4 "SFMono-Regular", Menlo, Consolas, "DejaVu Sans Mono", monospace;
  background: var(--panel); padding: 1px 5px; border-radius: 4px; overflow-wrap: anywhere; }
a { color: var(--accent); text-decoration: none; }
a:hover { text-decoration: underline; }
.top { display: flex; justify-content: space-between; align-items: flex-end; gap: 24px; flex-wrap: wrap; }
.eyebrow { text-transform: uppercase; letter-spacing: 1.5px; color: var(--muted); font-size: 12px;
  margin: 0; }
.sub, .meta, .muted { color: var(--muted); margin: 4px 0; }
.grade { text-align: right; }
.grade .big { font-size: 52px; font-weight: 700; line-height: 1; }
.grade .of { font-size: 18px; color: var(--muted); margin-left: 4px; }
.grade p { margin: 4px 0 0; font-weight: 600; }
.grade.good .big { color: var(--achieved); }
.grade.low .big { color: var(--at-risk); }
.note { background: var(--panel); border-left: 4px solid var(--accent); padding: 10px 14px; margin: 20px 0;
  color: var(--muted); }
.counts { display: grid; grid-template-columns: repeat(auto-fit, minmax(120px, 1fr)); gap: 10px; }
.count { border: 1px solid var(--line); border-top: 4px solid var(--not-started); border-radius: 8px;
  padding: 10px 14px; }
.count b { display: block; font-size: 26px; }
.count span { color: var(--muted); font-size: 13px; }
.count.s-achieved, .count.s-met { border-top-color: var(--achieved); }
.count.s-on-track { border-top-color: var(--on-track); }
.count.s-at-risk { border-top-color: var(--at-risk); }
.count.s-off-track, .count.s-missed { border-top-color: var(--off-track); }
table { width: 100%; border-collapse: collapse; margin: 10px 0; font-size: 14px; }
th { text-align: left; color: var(--muted); font-weight: 600; font-size: 12px; text-transform: uppercase;
  letter-spacing: 0.5px; }
th, td { padding: 7px 8px; border-bottom: 1px solid var(--line); vertical-align: top; }
.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
.bar { display: inline-block; width: 90px; height: 8px; background: var(--line); border-radius: 4px;
  vertical-align: middle; overflow: hidden; }
.bar span { display: block; height: 100%; background: var(--accent); }
.pill { display: inline-block; padding: 1px 9px; border-radius: 999px; font-size: 12px; font-weight: 600;
  color: #fff; background: var(--not-started); white-space: nowrap; }
.pill.s-achieved, .pill.s-met { background: var(--achieved); }
.pill.s-on-track { background: var(--on-track); }
.pill.s-at-risk { background: var(--at-risk); }
.pill.s-off-track, .pill.s-missed { background: var(--off-track); }
.kr { border: 1px solid var(--line); border-radius: 10px; padding: 4px 16px 12px; margin: 14px 0; }
.kr-body { display: grid; grid-template-columns: minmax(0, 3fr) minmax(0, 2fr); gap: 18px;
  align-items: start; }
.chart { width: 100%; height: auto; }
dl { margin: 0; font-size: 14px; }
dt { font-weight: 600; color: var(--muted); font-size: 12px; text-transform: uppercase; margin-top: 8px; }
dd { margin: 2px 0 0; }
dd ul { margin: 4px 0 0; padding-left: 18px; }
footer { margin-top: 40px; color: var(--muted); font-size: 12px; border-top: 1px solid var(--line);
  padding-top: 10px; }
.print-only { display: none; }
pre { white-space: pre-wrap; overflow-wrap: anywhere; font-size: 12.5px; }
/* Narrow screens: stack each KR card, and let a wide table scroll inside its own box instead of
   pushing the page wider than the screen (a table with display:block keeps its table layout inside). */
@media screen and (max-width: 760px) {
  main { padding: 20px 14px 32px; }
  h1 { font-size: 28px; }
  .grade { text-align: left; }
  .kr { padding: 4px 10px 10px; }
  .kr-body { grid-template-columns: 1fr; }
  table { display: block; overflow-x: auto; -webkit-overflow-scrolling: touch; }
  th, td { padding: 6px; }
}
/* Paper: A4 is narrower than the screen breakpoint, so the print rules keep the two-column cards;
   cards, rows and headings never split, and nothing is left collapsed. */
@page { size: A4; margin: 12mm; }
@media print {
  body { font-size: 10pt; }
  main { max-width: none; padding: 0; }
  * { -webkit-print-color-adjust: exact; print-color-adjust: exact; }
  h1 { font-size: 24pt; }
  h2 { font-size: 15pt; margin: 16px 0 4px; }
  h3 { font-size: 11pt; margin: 8px 0 4px; }
  .note { margin: 10px 0; padding: 6px 10px; }
  .top { flex-wrap: nowrap; }
  .grade .big { font-size: 36pt; }
  .counts { grid-template-columns: repeat(4, 1fr); }
  .count { padding: 6px 10px; }
  .count b { font-size: 18pt; }
  .kr { padding: 2px 10px 8px; margin: 8px 0; }
  .kr-body { grid-template-columns: minmax(0, 3fr) minmax(0, 2fr); gap: 12px; }
  .kr, tr, .counts, .top, dd { break-inside: avoid; page-break-inside: avoid; }
  thead { display: table-header-group; }
  h2, h3, .meta { break-after: avoid; page-break-after: avoid; }
  table { font-size: 9pt; }
  th, td { padding: 4px 6px; }
  details { display: none; }
  .print-only { display: block; }
  pre { font-size: 7.5pt; line-height: 1.3; }
  .print-only pre { column-count: 2; column-gap: 8mm; }
  .kr dl { font-size: 8.5pt; }
  .kr dt { margin-top: 4px; font-size: 7.5pt; }
  .chart { max-height: 45mm; object-fit: contain; object-position: left top; }
  footer { margin-top: 16px; }
  a { color: var(--ink); }
}
"""

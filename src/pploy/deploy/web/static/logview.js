/*
 * pploy live log viewer.
 *
 * Streams a job's terminal output (SSE or WebSocket) into a virtualised, CI-style log panel.
 *
 * Written from scratch on purpose: pploy installs from pip with no Node and no build step, and
 * pages load nothing from a CDN, so no npm ANSI/terminal library is usable here. The terminal
 * model below is deliberately small: it understands what deploy scripts actually print (SGR
 * colours, \r progress lines, erase-line, cursor left/right/up/down) and drops everything else.
 *
 * Security: log output is untrusted. It only ever reaches the DOM through text nodes
 * (createTextNode / textContent); styles are applied through classList and the CSSOM, never by
 * building HTML strings.
 */
(function () {
  'use strict';

  // ---------------------------------------------------------------------------------------------
  // Styles (SGR state). A style is an interned, frozen object so runs can be compared by identity
  // and the DOM class/colour strings are computed once per distinct style. `null` = default.
  // ---------------------------------------------------------------------------------------------

  const DEFAULT = Object.freeze({
    fg: null, bg: null, bold: false, dim: false, italic: false,
    underline: false, inverse: false, hidden: false, strike: false,
  });

  const styleCache = new Map();

  function intern(attrs) {
    const key = [String(attrs.fg), String(attrs.bg), +attrs.bold, +attrs.dim, +attrs.italic,
      +attrs.underline, +attrs.inverse, +attrs.hidden, +attrs.strike].join('|');
    if (key === 'null|null|0|0|0|0|0|0|0') return null;
    let style = styleCache.get(key);
    if (style) return style;
    // 24-bit colours could make this grow with the log; a bounded cache is plenty.
    if (styleCache.size > 4096) styleCache.clear();
    style = Object.freeze(Object.assign({}, attrs, render(attrs)));
    styleCache.set(key, style);
    return style;
  }

  // 256-colour palette entries 16..255 as CSS rgb(); 0..15 are themed through CSS classes.
  function xterm256(n) {
    if (n >= 232) {
      const v = 8 + (n - 232) * 10;
      return 'rgb(' + v + ',' + v + ',' + v + ')';
    }
    n -= 16;
    const level = (x) => (x === 0 ? 0 : 55 + x * 40);
    return 'rgb(' + level(Math.floor(n / 36)) + ',' + level(Math.floor(n / 6) % 6) + ',' +
      level(n % 6) + ')';
  }

  // Turn SGR attributes into a class list (palette colours, so the theme owns them) and inline
  // colours (256-colour cube and true colour). A colour is a palette index or a CSS string.
  function render(a) {
    let fg = a.fg;
    let bg = a.bg;
    const cls = [];
    if (a.inverse) {
      // Inverse with a default colour means "the panel's other colour": special classes.
      [fg, bg] = [bg === null ? 'inv-fg' : bg, fg === null ? 'inv-bg' : fg];
    }
    let color = '';
    let background = '';
    if (typeof fg === 'number' && fg < 16) cls.push('ansi-fg-' + fg);
    else if (typeof fg === 'number') color = xterm256(fg);
    else if (fg === 'inv-fg') cls.push('ansi-fg-inverse');
    else if (fg) color = fg;
    if (typeof bg === 'number' && bg < 16) cls.push('ansi-bg-' + bg);
    else if (typeof bg === 'number') background = xterm256(bg);
    else if (bg === 'inv-bg') cls.push('ansi-bg-inverse');
    else if (bg) background = bg;
    if (a.bold) cls.push('ansi-bold');
    if (a.dim) cls.push('ansi-dim');
    if (a.italic) cls.push('ansi-italic');
    if (a.underline) cls.push('ansi-underline');
    if (a.strike) cls.push('ansi-strike');
    if (a.hidden) cls.push('ansi-hidden');
    return { cls: cls.join(' '), color: color, background: background };
  }

  function byte(s) {
    const n = parseInt(s, 10);
    return Number.isFinite(n) ? Math.max(0, Math.min(255, n)) : 0;
  }

  function hex2(n) {
    return (n < 16 ? '0' : '') + n.toString(16);
  }

  function rgb(r, g, b) {
    return '#' + hex2(byte(r)) + hex2(byte(g)) + hex2(byte(b));
  }

  // Apply one SGR sequence (the text between "ESC[" and "m") to a style; returns the new style.
  function applySgr(style, paramText) {
    const a = Object.assign({}, style || DEFAULT);
    const ps = paramText === '' ? ['0'] : paramText.split(';');
    for (let i = 0; i < ps.length; i++) {
      const p = ps[i];
      if (p.indexOf(':') >= 0) {
        // ITU T.416 sub-parameter form: 38:2::r:g:b, 38:2:r:g:b, 38:5:n, 4:3 (curly underline).
        const sub = p.split(':');
        const head = +sub[0];
        if (head === 38 || head === 48 || head === 58) {
          let colour;
          if (sub[1] === '5' && sub.length >= 3) {
            const n = parseInt(sub[2], 10);
            colour = n >= 0 && n <= 255 ? n : undefined;
          } else if (sub[1] === '2' && sub.length >= 5) {
            const c = sub.length >= 6 ? sub.slice(-3) : sub.slice(2, 5);
            colour = rgb(c[0], c[1], c[2]);
          }
          if (colour !== undefined && head === 38) a.fg = colour;
          if (colour !== undefined && head === 48) a.bg = colour;
        } else if (head === 4) {
          a.underline = sub[1] !== '0';
        }
        continue;
      }
      const code = p === '' ? 0 : parseInt(p, 10);
      if (code === 0) Object.assign(a, DEFAULT);
      else if (code === 1) a.bold = true;
      else if (code === 2) a.dim = true;
      else if (code === 3) a.italic = true;
      else if (code === 4 || code === 21) a.underline = true;
      else if (code === 7) a.inverse = true;
      else if (code === 8) a.hidden = true;
      else if (code === 9) a.strike = true;
      else if (code === 22) a.bold = a.dim = false;
      else if (code === 23) a.italic = false;
      else if (code === 24) a.underline = false;
      else if (code === 27) a.inverse = false;
      else if (code === 28) a.hidden = false;
      else if (code === 29) a.strike = false;
      else if (code >= 30 && code <= 37) a.fg = code - 30;
      else if (code === 39) a.fg = null;
      else if (code >= 40 && code <= 47) a.bg = code - 40;
      else if (code === 49) a.bg = null;
      else if (code >= 90 && code <= 97) a.fg = code - 90 + 8;
      else if (code >= 100 && code <= 107) a.bg = code - 100 + 8;
      else if (code === 38 || code === 48 || code === 58) {
        // Extended colour, semicolon form: 38;5;n or 38;2;r;g;b (58 = underline colour: skip).
        let colour;
        if (ps[i + 1] === '5') {
          const n = parseInt(ps[i + 2], 10);
          colour = n >= 0 && n <= 255 ? n : undefined;
          i += 2;
        } else if (ps[i + 1] === '2') {
          colour = rgb(ps[i + 2], ps[i + 3], ps[i + 4]);
          i += 4;
        } else {
          break; // malformed: the rest of the sequence cannot be interpreted reliably
        }
        if (colour !== undefined && code === 38) a.fg = colour;
        if (colour !== undefined && code === 48) a.bg = colour;
      }
      // Anything else (blink, fonts, overline, ...) is ignored.
    }
    return intern(a);
  }

  // ---------------------------------------------------------------------------------------------
  // Terminal model. Lines are kept as data, not DOM: a line is a plain string (no styling) or an
  // array of runs {t: text, s: style}. The cursor (row, col) can move within existing lines so
  // progress output that redraws with \r, ESC[K, ESC[nA ends up as its last state only.
  // Columns are UTF-16 code units; wide characters are not measured (good enough for logs).
  // ---------------------------------------------------------------------------------------------

  const TEXT = 0;
  const ESC = 1;
  const CSI = 2;
  const STR = 3; // OSC/DCS/APC/PM/SOS string: skipped until BEL or ST
  const STR_ESC = 4;
  const ESC_INTER = 5; // ESC + intermediate bytes, e.g. ESC ( B
  const MAX_SEQ = 64;
  const MAX_MOVE = 1000; // longest cursor move honoured, in rows or columns
  const CONTROL = /[\x00-\x1f\x7f]/g;

  function runsOf(line) {
    if (typeof line !== 'string') return line;
    return line === '' ? [] : [{ t: line, s: null }];
  }

  function runsLength(runs) {
    let n = 0;
    for (let i = 0; i < runs.length; i++) n += runs[i].t.length;
    return n;
  }

  // Runs covering columns [from, to) of a line (to may be Infinity).
  function sliceRuns(runs, from, to) {
    const out = [];
    let pos = 0;
    for (let i = 0; i < runs.length && pos < to; i++) {
      const r = runs[i];
      const end = pos + r.t.length;
      if (end > from) {
        const a = Math.max(from, pos) - pos;
        const b = Math.min(to, end) - pos;
        out.push(a === 0 && b === r.t.length ? r : { t: r.t.slice(a, b), s: r.s });
      }
      pos = end;
    }
    return out;
  }

  // Runs of one style stop growing at RUN_MAX characters: a very long line becomes a list of
  // moderate strings, so appending never copies the line and rendering its start touches only
  // its first runs (joining onto one huge string would copy it again and again).
  const RUN_MAX = 1 << 16;

  function pushRun(runs, text, style) {
    if (!text) return;
    const last = runs[runs.length - 1];
    if (last && last.s === style && last.t.length < RUN_MAX) {
      runs[runs.length - 1] = { t: last.t + text, s: style };
    } else {
      runs.push({ t: text, s: style });
    }
  }

  class Terminal {
    constructor() {
      this.lines = [''];
      this.row = 0;
      this.col = 0;
      this.len = 0; // length of lines[row]
      this.style = null;
      this.mode = TEXT;
      this.seq = '';
      this.dirty = new Set(); // rows changed since the view last rendered
    }

    // Number of lines to display: a trailing empty line (after the final \n) is not shown.
    count() {
      const n = this.lines.length;
      return n > 1 && this.lines[n - 1] === '' ? n - 1 : n;
    }

    // The cursor row as a mutable run array (the row's string form is expanded on demand).
    editable() {
      let line = this.lines[this.row];
      if (typeof line === 'string') {
        line = runsOf(line).slice();
        this.lines[this.row] = line;
      }
      this.dirty.add(this.row);
      return line;
    }

    // Store a row compactly once the cursor leaves it: most lines become plain strings.
    compact(row) {
      const line = this.lines[row];
      if (typeof line === 'string') return;
      if (line.length === 0) this.lines[row] = '';
      else if (line.length === 1 && line[0].s === null) this.lines[row] = line[0].t;
    }

    moveTo(row, col) {
      row = Math.max(0, row);
      if (row !== this.row) {
        this.compact(this.row);
        while (row >= this.lines.length) this.lines.push('');
        this.row = row;
        const line = this.lines[row];
        this.len = typeof line === 'string' ? line.length : runsLength(line);
      }
      this.col = Math.max(0, col);
    }

    put(text) {
      let runs = this.editable();
      if (this.col > this.len) {
        pushRun(runs, ' '.repeat(this.col - this.len), null);
        this.len = this.col;
      }
      if (this.col === this.len) {
        pushRun(runs, text, this.style); // the common case: appending
      } else {
        // Overwrite from the cursor, as a terminal does after \r or a cursor move.
        const end = this.col + text.length;
        const next = sliceRuns(runs, 0, this.col);
        pushRun(next, text, this.style);
        for (const r of sliceRuns(runs, end, Infinity)) pushRun(next, r.t, r.s);
        runs = this.lines[this.row] = next;
      }
      this.col += text.length;
      this.len = Math.max(this.len, this.col);
    }

    eraseLine(mode) {
      const runs = this.editable();
      let next;
      if (mode === 0) next = sliceRuns(runs, 0, this.col);
      else if (mode === 1) {
        next = [];
        pushRun(next, ' '.repeat(Math.min(this.col + 1, this.len)), null);
        for (const r of sliceRuns(runs, this.col + 1, Infinity)) pushRun(next, r.t, r.s);
      } else next = [];
      this.lines[this.row] = next;
      this.len = runsLength(next);
    }

    csi(seq, final) {
      const c0 = seq.charCodeAt(0);
      if (c0 >= 0x3c && c0 <= 0x3f) return; // private modes (ESC[?25l etc.): nothing to show
      if (/[\x20-\x2f]/.test(seq)) return; // sequences with intermediates: none we support
      if (final === 'm') {
        this.style = applySgr(this.style, seq);
        return;
      }
      // Clamped like a terminal's screen: ESC[999999999C must not pad a line with a billion spaces.
      const n = Math.min(MAX_MOVE, Math.max(1, parseInt(seq, 10) || 1));
      switch (final) {
        case 'K': this.eraseLine(parseInt(seq, 10) || 0); break;
        case 'G': case '`': this.moveTo(this.row, n - 1); break;
        case 'C': this.moveTo(this.row, this.col + n); break;
        case 'D': this.moveTo(this.row, this.col - n); break;
        case 'A': this.moveTo(this.row - n, this.col); break;
        case 'F': this.moveTo(this.row - n, 0); break;
        // Down never scrolls a terminal: stay within the lines written so far.
        case 'B': this.moveTo(Math.min(this.row + n, this.lines.length - 1), this.col); break;
        case 'E': this.moveTo(Math.min(this.row + n, this.lines.length - 1), 0); break;
        default: break; // clear screen, absolute positioning, scroll regions...: meaningless here
      }
    }

    write(str) {
      let i = 0;
      const n = str.length;
      while (i < n) {
        if (this.mode === TEXT) {
          CONTROL.lastIndex = i;
          const m = CONTROL.exec(str);
          const stop = m ? m.index : n;
          if (stop > i) this.put(str.slice(i, stop));
          if (!m) return;
          i = stop + 1;
          const ch = str[stop];
          if (ch === '\n') this.moveTo(this.row + 1, 0);
          else if (ch === '\r') this.col = 0;
          else if (ch === '\t') this.put('\t');
          else if (ch === '\b') this.col = Math.max(0, this.col - 1);
          else if (ch === '\x1b') this.mode = ESC;
          // Other C0 controls (BEL, NUL, ...) and DEL are dropped.
          continue;
        }
        const ch = str[i++];
        const code = ch.charCodeAt(0);
        switch (this.mode) {
          case ESC:
            if (ch === '[') { this.mode = CSI; this.seq = ''; }
            else if (']PX^_'.indexOf(ch) >= 0) this.mode = STR; // OSC, DCS, SOS, PM, APC
            else if (code >= 0x20 && code <= 0x2f) this.mode = ESC_INTER;
            else if (ch === '\x1b') this.mode = ESC;
            else {
              this.mode = TEXT; // two-byte escapes (ESC 7, ESC =, ...) are ignored
              if (code < 0x20) i--; // a stray ESC before a line break must not eat the break
            }
            break;
          case CSI:
            if (code >= 0x40 && code <= 0x7e) {
              this.mode = TEXT;
              this.csi(this.seq, ch);
            } else if (code >= 0x20 && code <= 0x3f && this.seq.length < MAX_SEQ) {
              this.seq += ch;
            } else if (ch === '\x1b') {
              this.mode = ESC;
            } else {
              // Malformed or absurdly long: abandon it, and let a line break still count.
              this.mode = TEXT;
              if (code < 0x20) i--;
            }
            break;
          case STR:
            if (ch === '\x07') this.mode = TEXT;
            else if (ch === '\x1b') this.mode = STR_ESC;
            else if (ch === '\n') { this.mode = TEXT; i--; } // never let a stray OSC eat the log
            break;
          case STR_ESC:
            this.mode = ch === '\\' ? TEXT : STR;
            break;
          case ESC_INTER:
            if (code < 0x20 || code > 0x2f) this.mode = TEXT;
            break;
        }
      }
    }
  }

  // ---------------------------------------------------------------------------------------------
  // Small helpers shared by the view.
  // ---------------------------------------------------------------------------------------------

  function formatDuration(seconds) {
    seconds = Math.max(0, Math.floor(seconds));
    const h = Math.floor(seconds / 3600);
    const m = Math.floor(seconds / 60) % 60;
    const s = seconds % 60;
    const pad = (x) => (x < 10 ? '0' : '') + x;
    // Same format as the server's `duration` template filter: 5s, 3m05s, 1h02m03s.
    if (h) return h + 'h' + pad(m) + 'm' + pad(s) + 's';
    if (m) return m + 'm' + pad(s) + 's';
    return s + 's';
  }

  function lineFromHash() {
    const m = /^#L(\d+)$/.exec(location.hash);
    return m ? parseInt(m[1], 10) : null;
  }

  // Every case-insensitive occurrence of `needle` (already lower-cased) in `lines` (line texts),
  // as {line, start, end} in line order, at most `limit` of them.
  function findMatches(texts, needle, limit) {
    const out = [];
    if (!needle) return out;
    for (let i = 0; i < texts.length && out.length < limit; i++) {
      const hay = texts[i].toLowerCase();
      let at = hay.indexOf(needle);
      while (at >= 0 && out.length < limit) {
        out.push({ line: i, start: at, end: at + needle.length });
        at = hay.indexOf(needle, at + needle.length);
      }
    }
    return out;
  }

  // Wrap columns [start, end) of the text under `root` in <mark> elements, splitting text nodes
  // (styled runs stay as they are). `ranges` are sorted and disjoint; a range may span runs.
  function markRanges(root, ranges) {
    const walker = document.createTreeWalker(root, NodeFilter.SHOW_TEXT);
    const nodes = [];
    for (let n = walker.nextNode(); n; n = walker.nextNode()) nodes.push(n);
    let pos = 0;
    let r = 0;
    for (const node of nodes) {
      const nodeEnd = pos + node.data.length;
      let cur = node;
      let curStart = pos;
      pos = nodeEnd;
      while (r < ranges.length) {
        const range = ranges[r];
        if (range.start >= nodeEnd) break;
        const from = Math.max(range.start, curStart);
        const to = Math.min(range.end, nodeEnd);
        if (to > from) {
          const mid = from > curStart ? cur.splitText(from - curStart) : cur;
          const rest = to < nodeEnd ? mid.splitText(to - from) : null;
          const mark = document.createElement('mark');
          mark.className = range.current ? 'log-match log-match-current' : 'log-match';
          mid.replaceWith(mark);
          mark.append(mid);
          if (rest) {
            cur = rest;
            curStart = to;
          }
        }
        if (range.end <= nodeEnd) r++;
        else break;
      }
    }
  }

  // http(s) URLs in output become links. Only these two schemes: a `javascript:` or `data:` text
  // never becomes an href. The href is set as a property from the matched text, never as markup.
  const URL_RE = /\bhttps?:\/\/[^\s<>"'`\\\x00-\x1f\x7f]+/g;
  const URL_TRAIL = /[.,;:!?)\]}]+$/;

  function linkify(root) {
    const walker = document.createTreeWalker(root, NodeFilter.SHOW_TEXT);
    const nodes = [];
    for (let n = walker.nextNode(); n; n = walker.nextNode()) {
      if (n.data.indexOf('http') >= 0) nodes.push(n);
    }
    for (const node of nodes) {
      let cur = node;
      let base = 0; // where `cur` starts in node's original text
      const text = node.data;
      URL_RE.lastIndex = 0;
      for (let m = URL_RE.exec(text); m; m = URL_RE.exec(text)) {
        const url = m[0].replace(URL_TRAIL, '');
        let parsed;
        try {
          parsed = new URL(url);
        } catch (err) {
          continue;
        }
        if (parsed.protocol !== 'http:' && parsed.protocol !== 'https:') continue;
        const mid = m.index > base ? cur.splitText(m.index - base) : cur;
        const rest = url.length < mid.data.length ? mid.splitText(url.length) : null;
        const a = document.createElement('a');
        a.className = 'log-url';
        a.href = parsed.href;
        a.target = '_blank';
        a.rel = 'noopener noreferrer nofollow';
        mid.replaceWith(a);
        a.append(mid);
        if (!rest) break;
        cur = rest;
        base = m.index + url.length;
      }
    }
  }

  // Lines that look like errors, for "jump to first error".
  const ERROR_RE = /(^|[^a-z])(error|errors|fatal|failed|failure|exception|traceback|panic)([^a-z]|$)/i;
  // GitHub Actions' convention for collapsible sections.
  const GROUP = '::group::';
  const ENDGROUP = '::endgroup::';

  const MAX_MATCHES = 100000;
  const SEARCH_DELAY_MS = 150;

  const MARGIN = 40; // rows rendered above and below the visible window
  // Characters of one line put in the DOM until the reader asks for more: layout of a line grows
  // with its length, so a 50 MB line would freeze the page. The full text stays in the terminal
  // model (and in the raw log); the expander shows it MORE_STEP characters at a time.
  const LINE_CAP = 10000;
  const MORE_STEP = 100000;
  const LABELS = {
    more: '… %s more characters',
    show: 'show %s more',
    copy: 'copy line',
    raw: 'raw log',
    matches: '%s matches',
    match: '%s',
    none: 'no matches',
    noErrors: 'no errors',
  };
  const FRAME_BUDGET_MS = 12; // parse time per animation frame before yielding to the browser
  const FINAL = ['succeeded', 'failed', 'cancelled', 'interrupted', 'timed_out'];

  // ---------------------------------------------------------------------------------------------
  // The view: virtualised rendering, follow mode, line links, transports, status.
  // ---------------------------------------------------------------------------------------------

  class LogView {
    constructor(el) {
      this.el = el;
      this.term = new Terminal();
      this.queue = []; // decoded text chunks waiting for the next frame
      this.frame = 0;
      this.rendered = new Map(); // line index -> row element currently in the DOM
      this.shown = new Map(); // line index -> characters shown, for lines the reader expanded
      this.first = 0;
      this.last = 0;
      this.selected = null;
      this.pendingLine = lineFromHash(); // #L123 on load: jump once the line has arrived
      this.ended = false;
      this.status = null;
      this.offset = 0; // bytes received (WebSocket) / last SSE id
      this.retries = 0;
      this.source = null;
      this.socket = null;
      this.query = ''; // the search box's text, lower-cased
      this.matches = []; // {line, start, end} of every match, in order
      this.matchesByLine = new Map(); // line index -> its matches
      this.current = -1; // index in matches of the match Enter last went to
      this.searchStale = false; // output arrived since the matches were computed
      this.groups = new Map(); // header line index -> end line index (its ::endgroup::, or open)
      this.groupOpen = []; // header lines of groups not yet ended, innermost last
      this.scanned = 0; // lines below this index have been checked for group markers
      this.collapsed = new Set(); // header line indexes of collapsed groups
      this.view = null; // line indexes shown, in order, while any group is collapsed
      this.allSelected = false; // Ctrl+A in the panel: copy gives the whole log
      this.times = null; // [[line, unix time], ...] from the server while timestamps are shown
      this.wrap = false; // wrap long lines (rows then span several visual rows)
      this.wrapRows = null; // with wrap: visual rows before each display row (prefix sums)
      this.cols = 0; // with wrap: characters per visual row
      this.timesTimer = 0;

      const box = document.getElementById('log-follow');
      this.follow = box ? box.checked : true;
      if (this.pendingLine !== null) this.setFollow(false);

      el.textContent = '';
      el.setAttribute('role', 'log');
      el.tabIndex = 0; // keyboard scrolling of the panel
      this.top = document.createElement('div');
      this.top.className = 'log-spacer';
      this.rows = document.createElement('div');
      this.rows.className = 'log-rows';
      this.bottom = document.createElement('div');
      this.bottom.className = 'log-spacer';
      el.append(this.top, this.rows, this.bottom);
      this.measure();

      el.addEventListener('scroll', () => this.onScroll(), { passive: true });
      el.addEventListener('click', (e) => this.onClick(e));
      window.addEventListener('hashchange', () => this.jumpTo(lineFromHash()));
      // #log-follow is looked up by id, never kept: app.js may swap the section holding it.
      document.addEventListener('change', (e) => {
        if (e.target.id !== 'log-follow') return;
        this.setFollow(e.target.checked);
        if (this.follow) this.scrollToEnd();
      });
      document.addEventListener('pploy:live-updated', () => this.setFollow(this.follow));
      if (window.ResizeObserver) new ResizeObserver(() => this.schedule()).observe(el);
      this.wireSearch();
      this.wireTools();

      this.startTicker();
      // A finished job's status is set once its log has been received (finish()): before that
      // the page would claim an end it has not shown yet.
      if ((el.dataset.status || 'running') === 'running') document.body.dataset.jobStatus = 'running';
      this.connect();
    }

    // Row height comes from the stylesheet; measure one real row rather than hard-coding it.
    measure() {
      const probe = this.buildRow(0);
      this.rows.append(probe);
      this.rowH = probe.getBoundingClientRect().height || 20;
      probe.remove();
      const cs = getComputedStyle(this.el);
      this.padTop = parseFloat(cs.paddingTop) || 0;
    }

    // --- incoming data --------------------------------------------------------------------

    push(text) {
      if (!text) return;
      this.queue.push(text);
      this.schedule();
    }

    schedule() {
      if (!this.frame) this.frame = requestAnimationFrame(() => this.onFrame());
    }

    onFrame() {
      this.frame = 0;
      // Parse within a time budget so a huge backlog never freezes the page; continue next frame.
      const start = performance.now();
      while (this.queue.length && performance.now() - start < FRAME_BUDGET_MS) {
        this.term.write(this.queue.shift());
        if (this.query) this.searchStale = true;
      }
      this.render();
      if (this.queue.length) this.schedule();
    }

    // Parse everything queued now (before showing the final status).
    drain() {
      while (this.queue.length) this.term.write(this.queue.shift());
      if (this.query) this.search(this.query, false);
      if (this.showTimes) this.loadTimes();
      this.render();
    }

    // --- rendering ------------------------------------------------------------------------

    buildRow(i) {
      const row = document.createElement('div');
      row.className = 'log-line';
      if (i === this.selected) row.classList.add('log-line-selected');
      row.dataset.line = String(i + 1);
      if (this.wrap && this.cols) row.style.height = this.visualRows(i) * this.rowH + 'px';
      const ln = document.createElement('a');
      ln.className = 'log-ln';
      ln.href = '#L' + (i + 1);
      // The number is drawn by CSS from data-n, so copying log text never copies line numbers.
      ln.dataset.n = String(i + 1);
      ln.setAttribute('aria-label', 'Line ' + (i + 1));
      const text = document.createElement('span');
      text.className = 'log-text';
      const line = this.term.lines[i];
      const cap = this.shown.get(i) || LINE_CAP;
      let length;
      if (typeof line === 'string') {
        length = line.length;
        if (line) text.textContent = length > cap ? line.slice(0, cap) : line;
      } else {
        let room = cap;
        for (let r = 0; r < line.length && room > 0; r++) {
          const run = line[r];
          const t = run.t.length > room ? run.t.slice(0, room) : run.t;
          room -= t.length;
          if (run.s === null) {
            text.append(document.createTextNode(t));
            continue;
          }
          const span = document.createElement('span');
          if (run.s.cls) span.className = run.s.cls;
          if (run.s.color) span.style.color = run.s.color;
          if (run.s.background) span.style.backgroundColor = run.s.background;
          span.textContent = t;
          text.append(span);
        }
        length = room > 0 ? cap - room : i === this.term.row ? this.term.len : runsLength(line);
      }
      row.append(ln);
      if (this.times) row.append(this.buildTime(i));
      row.append(text);
      if (this.groups.has(i)) {
        // "::group::name": a disclosure button named after the group instead of the marker.
        const name = this.lineText(i + 1).slice(GROUP.length);
        const toggle = document.createElement('button');
        toggle.type = 'button';
        toggle.className = 'log-group-toggle';
        toggle.dataset.line = String(i + 1);
        toggle.setAttribute('aria-expanded', this.collapsed.has(i) ? 'false' : 'true');
        toggle.textContent = (this.collapsed.has(i) ? '▸ ' : '▾ ') + name;
        row.classList.add('log-group');
        text.replaceChildren(toggle);
        return row;
      }
      if (length > 0) linkify(text);
      const found = this.matchesByLine.get(i);
      if (found) {
        const current = this.matches[this.current];
        markRanges(text, found.map((m) => ({
          start: m.start, end: m.end, current: m === current,
        })));
      }
      if (length > cap) row.append(this.buildExpander(i, length - cap));
      return row;
    }

    // "… 49,990,000 more characters [show 100,000 more] [copy line] [raw log]" after a capped
    // line. Labels come from the page (#log's data-text-*, translated by the server).
    buildExpander(i, rest) {
      const more = document.createElement('span');
      more.className = 'log-more';
      more.append(this.label('more', rest.toLocaleString('en')) + ' ');
      const show = document.createElement('button');
      show.type = 'button';
      show.className = 'log-expand';
      show.dataset.line = String(i + 1);
      show.textContent = this.label('show', Math.min(rest, MORE_STEP).toLocaleString('en'));
      more.append(show);
      if (navigator.clipboard) {
        // The clipboard API exists in secure contexts only (https, localhost).
        const copy = document.createElement('button');
        copy.type = 'button';
        copy.className = 'log-copy';
        copy.dataset.line = String(i + 1);
        copy.textContent = this.label('copy');
        more.append(copy);
      }
      if (this.el.dataset.rawUrl) {
        const raw = document.createElement('a');
        raw.className = 'log-raw';
        raw.href = this.el.dataset.rawUrl;
        raw.target = '_blank';
        raw.rel = 'noopener';
        raw.textContent = this.label('raw');
        more.append(' ', raw);
      }
      return more;
    }

    label(name, value) {
      const key = 'text' + name[0].toUpperCase() + name.slice(1);
      const text = this.el.dataset[key] || LABELS[name];
      return value === undefined ? text : text.replace('%s', value);
    }

    // The whole text of line n (1-based), styles dropped: what "copy line" puts on the clipboard.
    lineText(n) {
      const line = this.term.lines[n - 1];
      if (line === undefined) return '';
      return typeof line === 'string' ? line : line.map((r) => r.t).join('');
    }

    // Show MORE_STEP more characters of line n (1-based).
    expand(n) {
      const i = n - 1;
      this.shown.set(i, (this.shown.get(i) || LINE_CAP) + MORE_STEP);
      this.term.dirty.add(i);
      this.render();
    }

    // --- search -----------------------------------------------------------------------------
    // The browser's own find cannot see rows that are not in the DOM, so the viewer searches its
    // model: every line of the log is held in memory, so the whole log is searched.

    wireSearch() {
      const box = document.getElementById('log-search');
      if (!box) return;
      const tools = document.getElementById('log-tools');
      if (tools) tools.hidden = false; // it needs this script; without it the page has none
      let timer = 0;
      box.addEventListener('input', () => {
        clearTimeout(timer);
        timer = setTimeout(() => this.search(box.value, true), SEARCH_DELAY_MS);
      });
      box.addEventListener('keydown', (e) => {
        if (e.key === 'Enter') {
          e.preventDefault();
          clearTimeout(timer);
          if (box.value.toLowerCase() !== this.query || this.searchStale) this.search(box.value, false);
          this.step(e.shiftKey ? -1 : 1);
        } else if (e.key === 'Escape') {
          box.value = '';
          this.search('', false);
        }
      });
      for (const [id, dir] of [['log-search-prev', -1], ['log-search-next', 1]]) {
        const button = document.getElementById(id);
        if (button) button.addEventListener('click', () => {
          if (box.value.toLowerCase() !== this.query || this.searchStale) this.search(box.value, false);
          this.step(dir);
        });
      }
    }

    lineTexts() {
      const out = new Array(this.term.count());
      for (let i = 0; i < out.length; i++) out[i] = this.lineText(i + 1);
      return out;
    }

    // Find `text` in the whole log; `preview` scrolls the first match into view (as you type)
    // without making it current, so the first Enter goes to it and the next one further on.
    search(text, preview) {
      const query = text.toLowerCase();
      const keep = this.matches[this.current];
      this.query = query;
      this.matches = findMatches(this.lineTexts(), query, MAX_MATCHES);
      this.searchStale = false;
      this.matchesByLine = new Map();
      for (const m of this.matches) {
        const list = this.matchesByLine.get(m.line);
        if (list) list.push(m);
        else this.matchesByLine.set(m.line, [m]);
      }
      // Same query, more output: stay on the same match.
      this.current = keep ? this.matches.findIndex(
        (m) => m.line === keep.line && m.start === keep.start) : -1;
      if (!query) this.current = -1;
      this.redraw();
      this.showCount();
      if (preview && this.matches.length) this.reveal(this.matches[0].line + 1);
    }

    step(dir) {
      const n = this.matches.length;
      if (!n) return;
      this.current = this.current < 0 ? (dir > 0 ? 0 : n - 1) : (this.current + dir + n) % n;
      const m = this.matches[this.current];
      this.expandTo(m.line);
      // A match past a long line's cap: show the line up to it.
      if (m.end > (this.shown.get(m.line) || LINE_CAP)) this.shown.set(m.line, m.end + 100);
      this.redraw();
      this.showCount();
      this.reveal(this.matches[this.current].line + 1);
    }

    showCount() {
      const out = document.getElementById('log-search-count');
      if (!out) return;
      const n = this.matches.length;
      let text = '';
      if (this.query && !n) text = this.label('none');
      else if (this.query && this.current >= 0) text = (this.current + 1).toLocaleString('en') + ' / ' + n.toLocaleString('en');
      else if (this.query) text = this.label('matches', n.toLocaleString('en'));
      out.textContent = text;
      this.el.dataset.matches = String(n);
      this.el.dataset.currentMatch = this.current >= 0 ? String(this.matches[this.current].line + 1) : '';
    }

    // --- timestamps -------------------------------------------------------------------------
    // pploy records beside the log when each piece of output arrived (<job>.times); the log's
    // bytes stay as the script wrote them. Shown in the viewer's time zone, labelled on hover.

    buildTime(i) {
      const ts = document.createElement('span');
      ts.className = 'log-ts';
      const t = this.timeOf(i + 1);
      if (t !== null) {
        const d = new Date(t * 1000);
        const pad = (x) => (x < 10 ? '0' : '') + x;
        // Drawn by CSS from data-ts, like line numbers: copying the log never copies times.
        ts.dataset.ts = pad(d.getHours()) + ':' + pad(d.getMinutes()) + ':' + pad(d.getSeconds());
        ts.title = d.toString();
      }
      return ts;
    }

    // When line n's output arrived: the last recorded time at or before line n.
    timeOf(n) {
      const t = this.times;
      if (!t || !t.length || t[0][0] > n) return null;
      let lo = 0;
      let hi = t.length - 1;
      while (lo < hi) {
        const mid = (lo + hi + 1) >> 1;
        if (t[mid][0] <= n) lo = mid;
        else hi = mid - 1;
      }
      return t[lo][1];
    }

    async loadTimes() {
      const url = this.el.dataset.timesUrl;
      if (!url) return;
      try {
        const response = await fetch(url, { credentials: 'same-origin', cache: 'no-store' });
        if (!response.ok) return;
        const body = await response.json();
        if (!this.showTimes) return;
        this.times = Array.isArray(body.lines) ? body.lines : [];
        this.el.classList.add('log-with-times');
        this.redraw();
      } catch (err) {
        // Network hiccup: the next refresh tries again.
      }
    }

    setTimes(on) {
      this.showTimes = on;
      clearInterval(this.timesTimer);
      if (on) {
        this.loadTimes();
        // While the job runs, new output gets its times on the next fetch.
        this.timesTimer = setInterval(() => { if (!this.ended) this.loadTimes(); }, 2000);
      } else {
        this.times = null;
        this.el.classList.remove('log-with-times');
        this.redraw();
      }
    }

    // --- copy, select-all, sections, errors ------------------------------------------------

    // The whole log as text (styles dropped): what "copy all" and Ctrl+A, Ctrl+C give.
    allText() {
      return this.lineTexts().join('\n') + '\n';
    }

    wireTools() {
      const copy = document.getElementById('log-copy-all');
      if (copy) copy.addEventListener('click', () => {
        navigator.clipboard.writeText(this.allText()).then(
          () => { copy.dataset.copied = 'yes'; },
          () => { copy.dataset.copied = 'no'; },
        );
      });
      if (copy && !navigator.clipboard) copy.hidden = true; // insecure context: no clipboard API
      const wrap = document.getElementById('log-wrap');
      if (wrap) wrap.addEventListener('change', () => this.setWrap(wrap.checked));
      const times = document.getElementById('log-times');
      if (times) {
        times.addEventListener('change', () => this.setTimes(times.checked));
        if (times.checked) this.setTimes(true);
      }
      const jump = document.getElementById('log-first-error');
      if (jump) jump.addEventListener('click', () => this.jumpToFirstError(jump));
      // Ctrl+A in the panel would select only the rows in the DOM: select the whole log instead.
      this.el.addEventListener('keydown', (e) => {
        if ((e.ctrlKey || e.metaKey) && !e.altKey && e.key.toLowerCase() === 'a') {
          e.preventDefault();
          this.allSelected = true;
          this.el.classList.add('log-all-selected');
          const sel = window.getSelection();
          if (sel) sel.selectAllChildren(this.rows);
        } else if (e.key === 'Escape' || !(e.ctrlKey || e.metaKey)) {
          this.unselectAll();
        }
      });
      this.el.addEventListener('mousedown', () => this.unselectAll());
      document.addEventListener('copy', (e) => {
        if (!this.allSelected || !e.clipboardData) return;
        e.clipboardData.setData('text/plain', this.allText());
        e.preventDefault();
      });
    }

    unselectAll() {
      if (!this.allSelected) return;
      this.allSelected = false;
      this.el.classList.remove('log-all-selected');
    }

    // The first line that looks like an error: selected and scrolled into view.
    jumpToFirstError(button) {
      const n = this.term.count();
      for (let i = 0; i < n; i++) {
        if (ERROR_RE.test(this.lineText(i + 1))) {
          this.expandTo(i);
          this.select(i + 1);
          this.reveal(i + 1);
          button.dataset.line = String(i + 1);
          return;
        }
      }
      button.dataset.line = '';
      button.textContent = this.label('noErrors');
    }

    // Find group markers in lines not yet scanned. The cursor's row may still change, so the
    // scan stops before it.
    scanGroups() {
      const end = Math.min(this.term.row, this.term.count());
      let changed = false;
      for (let i = this.scanned; i < end; i++) {
        const line = this.term.lines[i];
        const head = typeof line === 'string' ? line : (line[0] ? line[0].t : '');
        if (head.startsWith(GROUP)) {
          this.groups.set(i, null);
          this.groupOpen.push(i);
          changed = true;
        } else if (head.startsWith(ENDGROUP) && this.groupOpen.length) {
          this.groups.set(this.groupOpen.pop(), i);
          changed = true;
        }
      }
      this.scanned = Math.max(this.scanned, end);
      if (changed) for (const h of this.groups.keys()) this.term.dirty.add(h);
    }

    toggleGroup(header) {
      if (this.collapsed.has(header)) this.collapsed.delete(header);
      else this.collapsed.add(header);
      this.term.dirty.add(header);
      this.rebuildView();
      this.render();
    }

    // Open every collapsed group holding line i (a search match or error jumped to).
    expandTo(i) {
      let changed = false;
      for (const h of Array.from(this.collapsed)) {
        const end = this.groups.get(h);
        if (h < i && (end === null || i <= end)) {
          this.collapsed.delete(h);
          this.term.dirty.add(h);
          changed = true;
        }
      }
      if (changed) this.rebuildView();
    }

    // Which lines are shown: all of them, or those outside collapsed groups.
    rebuildView() {
      if (!this.collapsed.size) {
        this.view = null;
        return;
      }
      const n = this.term.count();
      const out = [];
      for (let i = 0; i < n; i++) {
        out.push(i);
        if (this.collapsed.has(i)) {
          const end = this.groups.get(i);
          i = end === null || end === undefined ? n : end;
        }
      }
      this.view = out;
      this.viewCount = n;
    }

    rowCount() {
      return this.view ? this.view.length : this.term.count();
    }

    lineAt(d) {
      return this.view ? this.view[d] : d;
    }

    // Display row of line i (the header of the collapsed group holding it, if any).
    rowOf(i) {
      if (!this.view) return i;
      let lo = 0;
      let hi = this.view.length - 1;
      while (lo < hi) {
        const mid = (lo + hi + 1) >> 1;
        if (this.view[mid] <= i) lo = mid;
        else hi = mid - 1;
      }
      return lo;
    }

    // --- wrapping ------------------------------------------------------------------------
    // Rows stay virtualised when wrapped: the font is monospace, so a line of L characters
    // takes ceil(L / cols) visual rows; each row gets that height and breaks anywhere.

    setWrap(on) {
      const keep = this.first + MARGIN < this.rowCount() ? this.lineAt(Math.min(
        this.rowCount() - 1, this.rowAtY(this.el.scrollTop - this.padTop))) : null;
      this.wrap = on;
      this.el.classList.toggle('log-wrap', on);
      this.cols = 0;
      this.wrapRows = null;
      for (const i of this.rendered.keys()) this.term.dirty.add(i);
      this.render();
      if (keep !== null && !this.follow) {
        this.el.scrollTop = this.padTop + this.rowTop(this.rowOf(keep));
        this.render();
      }
    }

    lineLength(i) {
      const line = this.term.lines[i];
      if (line === undefined) return 0;
      const length = typeof line === 'string' ? line.length
        : i === this.term.row ? this.term.len : runsLength(line);
      const cap = this.shown.get(i) || LINE_CAP;
      return length > cap ? cap + 60 : length; // the expander's words after a capped line
    }

    visualRows(i) {
      if (this.groups.has(i)) return 1;
      return Math.max(1, Math.ceil(this.lineLength(i) / this.cols));
    }

    // Characters per visual row: the panel's text width over one character's width.
    measureCols() {
      if (!this.charW) this.charW = this.measureChar();
      const row = this.rows.querySelector('.log-text');
      const left = row ? row.getBoundingClientRect().left - this.el.getBoundingClientRect().left : 64;
      return Math.max(10, Math.floor((this.el.clientWidth - left - 8) / this.charW));
    }

    measureChar() {
      const probe = document.createElement('span');
      probe.className = 'log-text';
      probe.style.position = 'absolute';
      probe.style.visibility = 'hidden';
      probe.style.whiteSpace = 'pre';
      probe.textContent = 'x'.repeat(100);
      this.el.append(probe);
      const charW = probe.getBoundingClientRect().width / 100 || 8;
      probe.remove();
      return charW;
    }

    layoutWrap(n) {
      const cols = this.measureCols();
      if (cols !== this.cols) {
        this.cols = cols;
        for (const i of this.rendered.keys()) this.term.dirty.add(i);
      }
      const rows = new Float64Array(n + 1);
      for (let d = 0; d < n; d++) rows[d + 1] = rows[d] + this.visualRows(this.lineAt(d));
      this.wrapRows = rows;
    }

    // Pixels from the top of the rows to display row d.
    rowTop(d) {
      if (this.wrap && this.wrapRows) {
        return this.wrapRows[Math.min(d, this.wrapRows.length - 1)] * this.rowH;
      }
      return d * this.rowH;
    }

    // The display row at pixel y (from the top of the rows).
    rowAtY(y) {
      if (!(this.wrap && this.wrapRows)) return Math.max(0, Math.floor(y / this.rowH));
      const rows = this.wrapRows;
      const target = y / this.rowH;
      let lo = 0;
      let hi = rows.length - 2;
      if (hi < 0) return 0;
      while (lo < hi) {
        const mid = (lo + hi + 1) >> 1;
        if (rows[mid] <= target) lo = mid;
        else hi = mid - 1;
      }
      return lo;
    }

    // Rebuild the rendered rows (their highlighting changed).
    redraw() {
      for (const i of this.rendered.keys()) this.term.dirty.add(i);
      this.render();
    }

    // Scroll so line n (1-based) is in view, a third of the way down; stop following.
    reveal(n) {
      this.setFollow(false);
      this.el.scrollTop = this.lineTop(n);
      this.render();
    }

    render() {
      const el = this.el;
      this.scanGroups();
      if (this.view && this.viewCount !== this.term.count()) this.rebuildView();
      const n = this.rowCount();
      const viewH = el.clientHeight || 600;
      if (this.wrap) this.layoutWrap(n);
      const total = this.rowTop(n);
      // Decide the scroll position first, so the window is computed once for where we will be.
      let top = el.scrollTop;
      if (this.pendingLine !== null && this.pendingLine <= this.term.count()) {
        top = this.lineTop(this.pendingLine);
      } else if (this.follow) {
        top = Math.max(0, total - viewH + this.padTop * 2);
      }
      const first = Math.max(0, this.rowAtY(top - this.padTop) - MARGIN);
      const last = Math.min(n, this.rowAtY(top + viewH) + 1 + MARGIN);
      const dirty = this.term.dirty;
      const wanted = new Set();
      for (let d = first; d < last; d++) wanted.add(this.lineAt(d));

      let changed = first !== this.first || last !== this.last || this.view !== this.shownView;
      for (const [i, node] of this.rendered) {
        if (!wanted.has(i) || dirty.has(i)) {
          this.rendered.delete(i);
          node.remove();
          changed = true;
        }
      }
      dirty.clear();
      if (changed) {
        const nodes = [];
        for (let d = first; d < last; d++) {
          const i = this.lineAt(d);
          let node = this.rendered.get(i);
          if (!node) {
            node = this.buildRow(i);
            this.rendered.set(i, node);
          }
          nodes.push(node);
        }
        this.rows.replaceChildren(...nodes);
        this.first = first;
        this.last = last;
        this.shownView = this.view;
      }
      this.top.style.height = this.rowTop(first) + 'px';
      this.bottom.style.height = total - this.rowTop(last) + 'px';
      this.el.dataset.lines = String(this.term.count());

      if (this.pendingLine !== null && this.pendingLine <= this.term.count()) {
        const line = this.pendingLine;
        this.pendingLine = null;
        this.select(line);
        el.scrollTop = top;
      } else if (this.follow) {
        el.scrollTop = el.scrollHeight;
      }
    }

    // Scroll position that shows line n (1-based) a third of the way down the panel.
    lineTop(n) {
      const row = this.rowOf(n - 1);
      return Math.max(0, this.padTop + this.rowTop(row) - Math.floor(this.el.clientHeight / 3));
    }

    select(n) {
      this.selected = n === null ? null : n - 1;
      for (const [i, node] of this.rendered) {
        node.classList.toggle('log-line-selected', i === this.selected);
      }
    }

    jumpTo(n) {
      if (n === null) return;
      this.setFollow(false);
      this.pendingLine = n; // applied by render(), now or once the line has streamed in
      this.render();
    }

    scrollToEnd() {
      this.el.scrollTop = this.el.scrollHeight;
      this.schedule();
    }

    setFollow(on) {
      this.follow = on;
      const box = document.getElementById('log-follow');
      if (box) box.checked = on;
      this.el.classList.toggle('log-following', on);
    }

    onScroll() {
      // Follow tracks the user's intent: at the bottom means "keep up", anywhere else means stop.
      // Our own scrolls land at the bottom (or jump to a line, where stopping is right too).
      const el = this.el;
      const atBottom = el.scrollHeight - el.scrollTop - el.clientHeight <= this.rowH / 2 + 1;
      if (atBottom !== this.follow) this.setFollow(atBottom);
      this.schedule();
    }

    onClick(e) {
      const group = e.target.closest && e.target.closest('button.log-group-toggle');
      if (group) {
        this.toggleGroup(parseInt(group.dataset.line, 10) - 1);
        return;
      }
      const expand = e.target.closest && e.target.closest('button.log-expand');
      if (expand) {
        this.expand(parseInt(expand.dataset.line, 10));
        return;
      }
      const copy = e.target.closest && e.target.closest('button.log-copy');
      if (copy) {
        const text = this.lineText(parseInt(copy.dataset.line, 10));
        navigator.clipboard.writeText(text).then(
          () => { copy.dataset.copied = 'yes'; },
          () => { copy.dataset.copied = 'no'; },
        );
        return;
      }
      const link = e.target.closest && e.target.closest('a.log-ln');
      if (!link || e.button !== 0 || e.metaKey || e.ctrlKey || e.shiftKey) return;
      e.preventDefault();
      const n = parseInt(link.dataset.n, 10);
      this.setFollow(false);
      this.select(n);
      // replaceState: no history entry per click and no native jump (rows are virtual anyway).
      history.replaceState(history.state, '', '#L' + n);
    }

    // --- transports -----------------------------------------------------------------------

    connect() {
      const override = new URLSearchParams(location.search).get('transport');
      const transport = override || this.el.dataset.transport || 'sse';
      this.el.dataset.transportActive = transport;
      if (transport === 'ws' && window.WebSocket) this.connectWs();
      else this.connectSse();
    }

    setConnection(state) {
      this.el.dataset.connection = state;
    }

    backoff() {
      // 0.5 s, 1 s, 2 s ... capped at 15 s; reset as soon as data flows again.
      const delay = Math.min(15000, 500 * 2 ** Math.min(this.retries, 5));
      this.retries++;
      return delay;
    }

    connectSse() {
      const url = new URL(this.el.dataset.eventsUrl, location.href);
      url.searchParams.set('offset', String(this.offset));
      const source = new EventSource(url);
      this.source = source;
      this.setConnection('connecting');
      source.onopen = () => this.setConnection('live');
      source.addEventListener('log', (e) => {
        this.retries = 0;
        const id = parseInt(e.lastEventId, 10);
        if (Number.isFinite(id)) this.offset = id;
        this.push(JSON.parse(e.data));
      });
      source.addEventListener('status', (e) => {
        source.close(); // otherwise EventSource reconnects once the server closes
        this.finish(JSON.parse(e.data));
      });
      source.onerror = () => {
        if (this.ended) return;
        if (source.readyState === EventSource.CLOSED) {
          // The browser gave up (HTTP error, wrong content type): retry ourselves from our offset.
          this.setConnection('reconnecting');
          setTimeout(() => this.ended || this.connectSse(), this.backoff());
        } else {
          // The browser reconnects by itself, sending Last-Event-ID.
          this.setConnection('reconnecting');
        }
      };
    }

    connectWs() {
      const url = new URL(this.el.dataset.wsUrl, location.href);
      url.protocol = url.protocol === 'https:' ? 'wss:' : 'ws:';
      url.searchParams.set('offset', String(this.offset));
      // One decoder for the whole stream: a UTF-8 character split across frames, or across a
      // reconnect (we resume at the byte after the last one received), still decodes.
      if (!this.decoder) this.decoder = new TextDecoder('utf-8');
      const ws = new WebSocket(url);
      ws.binaryType = 'arraybuffer';
      this.socket = ws;
      this.setConnection('connecting');
      ws.onopen = () => this.setConnection('live');
      ws.onmessage = (e) => {
        if (typeof e.data === 'string') {
          // The final status; other text frames (replies to client commands such as
          // {"action": "cancel"}) carry no string `status` and are not ours to handle.
          const msg = JSON.parse(e.data);
          if (msg && typeof msg.status === 'string') this.finish(msg);
          return;
        }
        this.retries = 0;
        this.offset += e.data.byteLength;
        this.push(this.decoder.decode(e.data, { stream: true }));
      };
      ws.onclose = (e) => {
        if (this.ended) return;
        // Policy/auth refusals will not get better by retrying.
        if (e.code === 1008 || (e.code >= 4000 && e.code < 5000)) {
          this.setConnection('closed');
          return;
        }
        this.setConnection('reconnecting');
        setTimeout(() => this.ended || this.connectWs(), this.backoff());
      };
    }

    // --- job status -------------------------------------------------------------------------

    finish(status) {
      if (this.ended) return;
      this.ended = true;
      this.status = status;
      if (this.decoder) this.push(this.decoder.decode());
      if (this.frame) cancelAnimationFrame(this.frame);
      this.frame = 0;
      this.drain();
      this.setConnection('ended');

      const name = FINAL.indexOf(status.status) >= 0 ? status.status : String(status.status);
      this.el.dataset.status = name;
      const badge = document.getElementById('job-status');
      // A badge that already shows this status keeps the server's (translated) label; a changed
      // one shows the raw name until app.js swaps in the server's fresh, translated #job-meta.
      if (badge && badge.dataset.status !== name) {
        badge.textContent = name;
        badge.dataset.status = name;
        for (const c of Array.from(badge.classList)) {
          if (c.indexOf('status-') === 0) badge.classList.remove(c);
        }
        badge.classList.add('status-' + name);
      }
      const duration = document.getElementById('job-duration');
      if (duration && status.ended_at) duration.dataset.endedAt = String(status.ended_at);
      this.tick();
      clearInterval(this.ticker);
      document.body.dataset.jobStatus = name;
      document.dispatchEvent(new CustomEvent('pploy:job-ended', { detail: status }));
    }

    // Elapsed time in #job-duration. Looked up by id on every tick: app.js may swap live sections.
    tick() {
      const d = document.getElementById('job-duration');
      if (!d) return;
      const started = parseFloat(d.dataset.startedAt);
      if (!Number.isFinite(started)) return;
      const ended = parseFloat(d.dataset.endedAt);
      const end = Number.isFinite(ended) ? ended : Date.now() / 1000;
      d.textContent = formatDuration(end - started);
    }

    startTicker() {
      this.tick();
      this.ticker = setInterval(() => this.tick(), 1000);
    }
  }

  function mount() {
    const el = document.getElementById('log');
    if (!el || el.pployLog) return;
    el.pployLog = new LogView(el);
  }

  // Exposed for tests and debugging only; the page contract is the DOM above.
  window.pployLogview = { Terminal: Terminal, applySgr: applySgr, mount: mount };

  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', mount);
  else mount();
})();

// l7gate service map. Everything from the agent (names, labels, policies,
// paths) is data: it reaches the page only through textContent and
// Cytoscape's canvas labels, never as markup.
'use strict';

(function () {
  const RECENT = 20;
  const COLORS = { allowed: '#1e8e3e', denied: '#d93025', audit: '#e37400', redirected: '#1a73e8', unknown: '#888888' };

  // verdictClass folds the verdict strings of every reporter (and of Hubble)
  // into the page's five colours.
  function verdictClass(v) {
    v = String(v || '').toLowerCase();
    if (v === 'allowed' || v === 'forwarded') return 'allowed';
    if (v === 'denied' || v === 'dropped' || v === 'error') return 'denied';
    if (v.startsWith('audit')) return 'audit';
    if (v === 'redirected') return 'redirected';
    return 'unknown';
  }

  // Node boxes fit their label (Cytoscape's width: label is deprecated).
  function lines(n) { return String(n.data('label') || '').split('\n'); }
  function nodeWidth(n) { return Math.min(270, 20 + 7 * Math.max(...lines(n).map(l => l.length))); }
  function nodeHeight(n) {
    return 14 + 15 * lines(n).reduce((k, l) => k + Math.max(1, Math.ceil(7 * l.length / 250)), 0);
  }

  const state = { nodes: new Map(), edges: new Map(), selected: null, flows: 0, layoutPending: false, connected: false };

  const cy = cytoscape({
    container: document.getElementById('cy'),
    style: [
      { selector: 'node', style: {
        'label': 'data(label)', 'text-wrap': 'wrap', 'text-valign': 'center', 'text-halign': 'center',
        'font-size': 12, 'shape': 'round-rectangle', 'width': nodeWidth, 'height': nodeHeight,
        'text-max-width': 250, 'text-overflow-wrap': 'anywhere',
        'background-color': '#e8f0fe', 'border-width': 1, 'border-color': '#5f6368' } },
      { selector: 'node[kind = "entity"]', style: { 'shape': 'ellipse', 'background-color': '#f1f3f4' } },
      { selector: 'edge', style: {
        'label': 'data(label)', 'font-size': 10, 'curve-style': 'bezier', 'control-point-step-size': 36, 'target-arrow-shape': 'triangle',
        'width': 2.5, 'line-color': 'data(color)', 'target-arrow-color': 'data(color)', 'color': 'data(color)',
        'text-rotation': 'autorotate', 'text-background-color': '#ffffff', 'text-background-opacity': 0.9,
        'text-background-padding': 2, 'text-margin-y': -8 } },
      { selector: 'edge:selected', style: { 'width': 5 } },
      { selector: '.filtered', style: { 'display': 'none' } },
    ],
  });

  const nsSelect = document.getElementById('namespace');
  const statusEl = document.getElementById('status');

  function nodeLabel(n) { return n.namespace ? n.name + '\n' + n.namespace : n.name; }
  function edgeLabel(e) { return (e.policy || '(no policy)') + '  ×' + e.count; }

  function addNode(n) {
    if (state.nodes.has(n.id)) return false;
    state.nodes.set(n.id, n);
    cy.add({ group: 'nodes', data: { id: n.id, label: nodeLabel(n), kind: n.kind, namespace: n.namespace || '', name: n.name } });
    if (n.namespace && ![...nsSelect.options].some(o => o.value === n.namespace)) {
      const o = document.createElement('option');
      o.value = n.namespace;
      o.textContent = n.namespace;
      nsSelect.appendChild(o);
    }
    return true;
  }

  function upsertEdge(e, flows) {
    let st = state.edges.get(e.id);
    const vc = verdictClass(e.verdict);
    if (!st) {
      st = { edge: e, flows: [] };
      state.edges.set(e.id, st);
      cy.add({ group: 'edges', data: { id: e.id, source: e.source, target: e.target, verdict: vc, rawVerdict: e.verdict,
        policy: e.policy || '', color: COLORS[vc], label: edgeLabel(e) } });
    } else {
      st.edge = e;
      cy.getElementById(e.id).data('label', edgeLabel(e));
    }
    for (const f of flows || []) {
      st.flows.push(f);
      if (st.flows.length > RECENT) st.flows.shift();
    }
    return st;
  }

  let layoutTimer = null;
  function relayout() {
    clearTimeout(layoutTimer);
    state.layoutPending = true;
    layoutTimer = setTimeout(() => {
      const els = cy.elements(':visible');
      // deterministic: a circle in id order, then forces from there
      els.layout({ name: 'circle', sort: (a, b) => (a.id() < b.id() ? -1 : 1), animate: false }).run();
      els.layout({ name: 'cose', randomize: false, animate: false, nodeRepulsion: () => 400000,
        idealEdgeLength: () => 160, edgeElasticity: () => 100, nodeOverlap: 20, padding: 30 }).run();
      cy.fit(cy.elements(':visible'), 40);
      if (cy.zoom() > 1.5) { cy.zoom(1.5); cy.center(cy.elements(':visible')); }
      state.layoutPending = false;
    }, 200);
  }

  function applyFilter() {
    const ns = nsSelect.value;
    const verdicts = new Set([...document.querySelectorAll('#verdicts input:checked')].map(i => i.value));
    const shown = new Set();
    cy.batch(() => {
      cy.edges().forEach(ed => {
        const s = state.nodes.get(ed.data('source')), t = state.nodes.get(ed.data('target'));
        const inNs = !ns || (s && s.namespace === ns) || (t && t.namespace === ns);
        const show = inNs && verdicts.has(ed.data('verdict'));
        ed.toggleClass('filtered', !show);
        if (show) { shown.add(ed.data('source')); shown.add(ed.data('target')); }
      });
      cy.nodes().forEach(nd => {
        const show = shown.has(nd.id()) || (!!ns && nd.data('namespace') === ns);
        nd.toggleClass('filtered', !show);
      });
    });
    relayout();
  }

  function td(text, cls) {
    const c = document.createElement('td');
    c.textContent = text == null ? '' : String(text);
    if (cls) c.className = cls;
    return c;
  }

  function l7(f) {
    if (f.method || f.path) return [f.method, f.path, f.status ? '→ ' + f.status : ''].filter(Boolean).join(' ');
    if (f.apiKey) return 'kafka ' + f.apiKey + (f.topics && f.topics.length ? ' ' + f.topics.join(',') : '') + (f.errorCode ? ' error ' + f.errorCode : '');
    if (f.dnsQuery) return 'dns ' + f.dnsQuery + (f.dnsRcode ? ' ' + f.dnsRcode : '');
    return f.protocol || '';
  }

  function showEdge(id) {
    state.selected = id;
    const st = state.edges.get(id);
    const title = document.getElementById('edge-title');
    const pol = document.getElementById('edge-policy');
    const table = document.getElementById('flows');
    const body = table.querySelector('tbody');
    body.replaceChildren();
    if (!st) { title.textContent = ''; pol.textContent = ''; table.hidden = true; return; }
    const s = state.nodes.get(st.edge.source), t = state.nodes.get(st.edge.target);
    document.getElementById('hint').hidden = true;
    title.textContent = (s ? nodeLabel(s).replace('\n', ' · ') : st.edge.source) + '  →  ' + (t ? nodeLabel(t).replace('\n', ' · ') : st.edge.target);
    pol.textContent = st.edge.verdict + ' by ' + (st.edge.policy || '(no policy)') + ' · ' + st.edge.count + ' flows';
    for (const f of [...st.flows].reverse()) {
      const tr = document.createElement('tr');
      tr.appendChild(td(new Date(f.time).toLocaleTimeString(), 'nowrap'));
      tr.appendChild(td(f.verdict, 'nowrap verdict-' + verdictClass(f.verdict)));
      tr.appendChild(td((f.srcPod || f.source || '?') + ' → ' + (f.dstPod || f.destination || '?')));
      tr.appendChild(td(l7(f), 'l7'));
      tr.appendChild(td((f.decidedBy || []).join('; ') || f.reason || ''));
      body.appendChild(tr);
    }
    table.hidden = false;
  }

  cy.on('tap', 'edge', ev => showEdge(ev.target.id()));

  function reset(g) {
    cy.elements().remove();
    state.nodes.clear();
    state.edges.clear();
    state.flows = 0;
    for (const n of g.nodes || []) addNode(n);
    for (const e of g.edges || []) { upsertEdge(e, e.flows); state.flows += e.count; }
    applyFilter();
    if (state.selected) showEdge(state.selected);
  }

  function setStatus(s) { statusEl.textContent = s; }

  nsSelect.addEventListener('change', applyFilter);
  document.querySelectorAll('#verdicts input').forEach(i => i.addEventListener('change', applyFilter));

  const es = new EventSource('events');
  es.addEventListener('graph', m => {
    reset(JSON.parse(m.data));
    state.connected = true;
    setStatus('live · ' + state.flows + ' flows');
  });
  es.addEventListener('flow', m => {
    const u = JSON.parse(m.data);
    let added = false;
    for (const n of u.nodes || []) added = addNode(n) || added;
    const isNew = !state.edges.has(u.edge.id);
    upsertEdge(u.edge, [u.flow]);
    state.flows++;
    if (added || isNew) applyFilter();
    if (state.selected === u.edge.id) showEdge(u.edge.id);
    setStatus('live · ' + state.flows + ' flows');
  });
  es.addEventListener('lost', () => setStatus('fell behind; reconnecting…'));
  es.onerror = () => setStatus('reconnecting…');

  // For tests and the console.
  window.serviceMap = { cy, state, verdictClass, showEdge };
})();

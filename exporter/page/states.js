'use strict';
// Keeps /states live: each "snapshot" event of api/v1/events (the same
// JSON as api/v1/snapshot) is drawn onto the diagram and the tables that
// the server rendered.
(function () {
	var body = document.body;
	var leakAfter = Number(body.dataset.leakAfter);
	var stuckAfter = Number(body.dataset.stuckAfter);
	var pileUp = Number(body.dataset.pileUp);
	var live = document.getElementById('live');
	var select = document.getElementById('netns');
	var last = null;

	function duration(s) {
		if (!(s > 0)) return '–';
		if (s < 1e-3) return Math.floor(s * 1e6) + 'µs';
		if (s < 1e-2) return (s * 1e3).toFixed(1) + 'ms';
		if (s < 1) return (s * 1e3).toFixed(0) + 'ms';
		if (s < 60) return s.toFixed(1) + 's';
		var m = Math.floor(s / 60), h = Math.floor(s / 3600);
		if (s < 3600) return m + 'm' + pad(Math.floor(s) % 60) + 's';
		if (s < 48 * 3600) return h + 'h' + pad(m % 60) + 'm';
		return Math.floor(h / 24) + 'd' + pad(h % 24) + 'h';
	}
	function pad(n) { return (n < 10 ? '0' : '') + n; }
	function rate(r) {
		if (!(r > 0)) return '0/s';
		if (r < 0.1) return r.toFixed(2) + '/s';
		if (r < 10) return r.toFixed(1) + '/s';
		return r.toFixed(0) + '/s';
	}
	function width(r) { return Math.min(10, 1.2 + 2.2 * Math.log10(1 + 10 * Math.max(r, 0))).toFixed(1); }
	function stays(st) {
		if (!st || st.median_seconds === null || st.p99_seconds === null) return 'stay p50 – p99 –';
		return 'stay p50 ' + duration(st.median_seconds) + ' p99 ' + duration(st.p99_seconds);
	}
	function text(id, s) {
		var el = document.getElementById(id);
		if (el && el.textContent !== s) el.textContent = s;
	}
	function cell(tr, s) {
		var td = document.createElement('td');
		td.textContent = s;
		tr.appendChild(td);
		return td;
	}
	function fill(tbody, rows, empty, cols) {
		tbody.textContent = '';
		if (rows.length === 0) {
			var tr = document.createElement('tr');
			cell(tr, empty).colSpan = cols;
			tbody.appendChild(tr);
		}
		rows.forEach(function (r) { tbody.appendChild(r); });
	}
	function sum(m) {
		var n = 0;
		for (var k in m) n += m[k];
		return n;
	}

	function render(snap) {
		last = snap;
		var ns = select ? select.value : '';
		var nsStates = null;
		(snap.namespaces || []).forEach(function (n) { if (n.name === ns) nsStates = n.states; });
		var ports = snap.ports.rows.filter(function (p) { return !ns || p.netns === ns; });
		var full = ports.some(function (p) { return p.queue_limit > 0 && p.queue_length >= p.queue_limit; });

		text('time', snap.time ? 'as of ' + new Date(snap.time).toLocaleString() : 'no complete poll yet');
		text('mode', snap.mode);
		text('interval', duration(snap.poll_interval_seconds));

		var stateRows = document.querySelectorAll('#state-table tbody tr');
		snap.states.forEach(function (st, i) {
			var here = nsStates ? nsStates[i] : st;
			var name = st.state, total = here.sockets.ipv4 + here.sockets.ipv6;
			var g = document.getElementById('state-' + name);
			if (!g) return;
			g.dataset.ipv4 = here.sockets.ipv4;
			g.dataset.ipv6 = here.sockets.ipv6;
			text('n-' + name, 'IPv4 ' + here.sockets.ipv4 + ' · IPv6 ' + here.sockets.ipv6);
			text('o-' + name, 'oldest ' + duration(here.oldest_seconds));
			text('s-' + name, stays(st.stays));
			var why = '';
			if (name === 'CLOSE_WAIT' && here.oldest_seconds > leakAfter) why = 'a socket has been in CLOSE_WAIT for over ' + duration(leakAfter) + ': a leak';
			if (name === 'SYN_SEND' && here.oldest_seconds > stuckAfter) why = 'a connect() has waited over ' + duration(stuckAfter) + ' for an answer';
			if (name === 'SYN_RCVD' && total > pileUp) why = 'over ' + pileUp + ' half-open incoming connections';
			if (name === 'LISTEN' && full) why = "a listening port's accept queue is full";
			g.classList.toggle('trouble', why !== '');
			g.querySelector('title').textContent = name + (why ? ': ' + why : '');
			var tr = stateRows[i];
			if (tr) {
				var c = tr.children;
				c[1].textContent = here.sockets.ipv4;
				c[2].textContent = here.sockets.ipv6;
				c[3].textContent = duration(here.oldest_seconds);
				c[4].textContent = st.stays ? st.stays.count : '';
				c[5].textContent = st.stays && st.stays.median_seconds !== null ? duration(st.stays.median_seconds) : '–';
				c[6].textContent = st.stays && st.stays.p99_seconds !== null ? duration(st.stays.p99_seconds) : '–';
			}
		});

		var seen = {};
		snap.transitions.forEach(function (t) { seen['t-' + t.from + '-' + t.to] = t; });
		document.querySelectorAll('#arrows .arrow').forEach(function (g) {
			var t = seen[g.id] || { total: 0, per_second: 0 };
			g.dataset.total = t.total;
			g.querySelector('path').setAttribute('stroke-width', width(t.per_second));
			g.querySelector('.rate').textContent = rate(t.per_second);
			g.classList.toggle('idle', !(t.per_second > 0));
			if (g.classList.contains('extra')) g.classList.toggle('unseen', t.total === 0);
		});
		var trs = snap.transitions.map(function (t) {
			var tr = document.createElement('tr');
			cell(tr, t.from); cell(tr, t.to); cell(tr, t.total); cell(tr, rate(t.per_second));
			return tr;
		});
		fill(document.querySelector('#transition-table tbody'), trs, 'none yet', 4);

		var showNs = (snap.namespaces || []).length > 0;
		ports.sort(function (a, b) {
			return ((b.sockets.CLOSE_WAIT || 0) - (a.sockets.CLOSE_WAIT || 0)) || (sum(b.sockets) - sum(a.sockets));
		});
		fill(document.querySelector('#ports tbody'), ports.slice(0, 10).map(function (p) {
			var tr = document.createElement('tr');
			if (p.queue_limit > 0 && p.queue_length >= p.queue_limit) tr.className = 'trouble';
			cell(tr, p.port);
			cell(tr, p.netns || '').hidden = !showNs;
			cell(tr, p.sockets.CLOSE_WAIT || 0);
			cell(tr, p.sockets.ESTABLISHED || 0);
			cell(tr, p.port === 'none' ? '' : p.queue_length + ' / ' + p.queue_limit);
			return tr;
		}), 'no sockets', 5);
		document.querySelectorAll('#ports th.ns').forEach(function (th) { th.hidden = !showNs; });

		var procBody = document.querySelector('#processes tbody');
		if (snap.processes) {
			var order = snap.states.map(function (s) { return s.state; });
			fill(procBody, snap.processes.rows.slice(0, 10).map(function (p) {
				var tr = document.createElement('tr');
				cell(tr, p.process);
				cell(tr, order.filter(function (s) { return p.sockets[s]; }).map(function (s) { return s + ' ' + p.sockets[s]; }).join(', '));
				return tr;
			}), 'none', 2);
		}

		if (select) {
			document.getElementById('nsbar').hidden = !showNs;
			var names = (snap.namespaces || []).map(function (n) { return n.name; });
			var have = Array.prototype.slice.call(select.options, 1).map(function (o) { return o.value; });
			if (names.join('\n') !== have.join('\n')) {
				while (select.options.length > 1) select.remove(1);
				snap.namespaces.forEach(function (n) { select.add(new Option(n.name + ' (' + n.inode + ')', n.name)); });
				select.value = names.indexOf(ns) >= 0 ? ns : '';
			}
		}
		body.dataset.rendered = String(Number(body.dataset.rendered || 0) + 1);
	}

	if (select) select.addEventListener('change', function () { if (last) render(last); });
	if (!window.EventSource) return;
	var events = new EventSource('api/v1/events');
	events.addEventListener('snapshot', function (e) {
		render(JSON.parse(e.data));
		live.textContent = 'live';
		live.className = 'on';
	});
	events.addEventListener('error', function () {
		live.textContent = 'reconnecting…';
		live.className = 'off';
	});
})();

// The overview's charts: jobs/s and p50/p95 latency per minute, re-read every 5 s from overview.json.
(function () {
  const root = document.getElementById("charts");
  if (!root || typeof uPlot === "undefined") return;
  let charts = [];
  function series(points, field) {
    const minutes = [...new Set(points.map(p => Date.parse(p.minute) / 1000))].sort((a, b) => a - b);
    const models = [...new Set(points.map(p => p.model))].sort();
    const data = [minutes];
    for (const model of models) {
      const at = new Map(points.filter(p => p.model === model).map(p => [Date.parse(p.minute) / 1000, p[field]]));
      data.push(minutes.map(m => at.has(m) ? at.get(m) : null));
    }
    return {models, data};
  }
  function draw(points) {
    charts.forEach(c => c.destroy());
    charts = [];
    for (const [id, field, title] of [["throughput", "jobs_per_s", "jobs/s"], ["latency", "p95_s", "p95 latency (s)"], ]) {
      const s = series(points, field);
      const opts = {title, width: 520, height: 220, series: [{}, ...s.models.map((m, i) => ({label: m, stroke: `hsl(${i * 67}, 60%, 45%)`}))]};
      charts.push(new uPlot(opts, s.data, document.getElementById(id)));
    }
  }
  function refresh() {
    fetch(root.dataset.source, {credentials: "same-origin"}).then(r => r.ok ? r.json() : null).then(o => { if (o) draw(o.series); });
  }
  refresh();
  setInterval(refresh, 5000);
})();

// The overview's charts: jobs/s, and p50 and p95 latency per minute, re-read every 5 s from overview.json.
(function () {
  const root = document.getElementById("charts");
  if (!root || typeof uPlot === "undefined") return;
  let charts = [];
  // One line per model and field: the x axis is every minute any model has, gaps where a model had none.
  function series(points, fields) {
    const minutes = [...new Set(points.map(p => Date.parse(p.minute) / 1000))].sort((a, b) => a - b);
    const models = [...new Set(points.map(p => p.model))].sort();
    const data = [minutes], lines = [];
    for (const [field, name, dash] of fields) {
      models.forEach((model, i) => {
        const at = new Map(points.filter(p => p.model === model).map(p => [Date.parse(p.minute) / 1000, p[field]]));
        data.push(minutes.map(m => at.has(m) ? at.get(m) : null));
        lines.push({label: name ? `${model} ${name}` : model, stroke: `hsl(${i * 67}, 60%, 45%)`, dash});
      });
    }
    return {lines, data};
  }
  const CHARTS = [
    ["throughput", "jobs/s", [["jobs_per_s", "", undefined]]],
    ["latency", "latency (s): p50 dashed, p95 solid", [["p50_s", "p50", [4, 4]], ["p95_s", "p95", undefined]]],
  ];
  function draw(overview) {
    charts.forEach(c => c.destroy());
    charts = [];
    // The whole window on the x axis, however few minutes had jobs (uPlot would stretch one point over years).
    const end = Date.parse(overview.at) / 1000, start = end - Number(root.dataset.minutes) * 60;
    for (const [id, title, fields] of CHARTS) {
      const s = series(overview.series, fields);
      const opts = {title, width: 520, height: 220, series: [{}, ...s.lines],
                    scales: {x: {time: true, range: () => [start, end]}}};
      charts.push(new uPlot(opts, s.data, document.getElementById(id)));
    }
  }
  function refresh() {
    fetch(root.dataset.source, {credentials: "same-origin"}).then(r => r.ok ? r.json() : null).then(o => { if (o) draw(o); });
  }
  refresh();
  setInterval(refresh, 5000);
})();

/* Draws the dashboard's charts with the vendored Chart.js. Each <canvas data-chart="columns">
   (amounts over time, vertical bars) or <canvas data-chart="ranking"> (amounts by name,
   horizontal bars, largest first) names, in data-source, a <script type="application/json"> block holding
   {"labels": [...], "values": [...]}: US dollars, computed exactly by the server. The page
   makes no requests of its own; this script only draws what the server rendered. */
(function () {
  "use strict";

  var INK = "#1f2937";
  var MUTED = "#6b7280";
  var GRID = "#e5e7eb";
  var ACCENT = "#2563eb";
  var PALETTE = ["#2563eb", "#0d9488", "#7c3aed", "#d97706", "#db2777", "#4b5563", "#059669", "#9333ea"];

  function money(value) {
    if (value > 0 && value < 0.005) {
      return "< $0.01";
    }
    return "$" + value.toLocaleString("en-US", { minimumFractionDigits: 2, maximumFractionDigits: 2 });
  }

  function axisMoney(value) {
    if (value === 0) {
      return "$0";
    }
    if (Math.abs(value) < 0.01) {
      return "$" + value.toPrecision(2);
    }
    return money(value);
  }

  function options(horizontal) {
    var valueAxis = {
      beginAtZero: true,
      grid: { color: GRID },
      border: { display: false },
      ticks: { color: MUTED, callback: axisMoney, maxTicksLimit: 6 },
    };
    var labelAxis = {
      grid: { display: false },
      border: { color: GRID },
      ticks: { color: MUTED, autoSkip: true, maxRotation: 0 },
    };
    return {
      responsive: true,
      maintainAspectRatio: false,
      animation: false,
      indexAxis: horizontal ? "y" : "x",
      plugins: {
        legend: { display: false },
        tooltip: {
          callbacks: {
            label: function (item) {
              return money(horizontal ? item.parsed.x : item.parsed.y);
            },
          },
        },
      },
      scales: horizontal ? { x: valueAxis, y: labelAxis } : { x: labelAxis, y: valueAxis },
    };
  }

  function dataset(kind, values) {
    if (kind === "columns") {
      return { data: values, backgroundColor: ACCENT, borderRadius: 2, maxBarThickness: 22 };
    }
    return {
      data: values,
      backgroundColor: values.map(function (_, index) { return PALETTE[index % PALETTE.length]; }),
      borderRadius: 3,
      maxBarThickness: 28,
    };
  }

  function draw(canvas) {
    var source = document.getElementById(canvas.dataset.source);
    if (!source) {
      return;
    }
    var data = JSON.parse(source.textContent);
    var kind = canvas.dataset.chart;
    var chart = new Chart(canvas, {
      type: "bar",
      data: { labels: data.labels, datasets: [dataset(kind, data.values)] },
      options: options(kind === "ranking"),
    });
    canvas.dataset.drawn = String(chart.data.labels.length);
  }

  if (typeof Chart === "undefined") {
    return;
  }
  Chart.defaults.font.family = getComputedStyle(document.body).fontFamily;
  Chart.defaults.color = INK;
  document.querySelectorAll("canvas[data-chart]").forEach(draw);
})();

// Draws every chart on the page from its data-fig JSON (plotly.js is served from /vendor, never a CDN).
(function () {
  function draw() {
    if (!window.Plotly) return;
    document.querySelectorAll('[data-fig]').forEach(function (el) {
      var f = JSON.parse(el.getAttribute('data-fig'));
      Plotly.newPlot(el, f.data, f.layout, {displaylogo: false, responsive: true});
    });
  }
  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', draw); else draw();
})();

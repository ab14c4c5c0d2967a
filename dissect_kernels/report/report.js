/* dissect_kernels report (inlined into every page; no network access):
   - click a column header to sort (numbers numerically via data-v; a header's first click sorts
     in its data-first direction); tables with one <tbody> per unit sort the tbodies, so a unit's
     exemplar row moves with it;
   - "detectors only" and "label contains" filter the unit tables;
   - click an exemplar strip to see its images enlarged (2x), Escape or a click closes it. */
(function () {
  function key(row, col) {
    var cell = row.cells[col];
    if (!cell) { return ''; }
    var v = cell.getAttribute('data-v');
    return v === null ? cell.textContent.trim() : v;
  }
  function compare(x, y) {
    var nx = parseFloat(x), ny = parseFloat(y);
    if (!isNaN(nx) && !isNaN(ny) && String(nx) !== 'NaN') { return nx - ny; }
    return x.localeCompare(y);
  }
  function sortTable(table, th, col) {
    var heads = table.tHead.rows[0].cells, state = th.getAttribute('aria-sort');
    var asc = state ? state !== 'ascending' : (th.getAttribute('data-first') || 'ascending') === 'ascending';
    Array.prototype.forEach.call(heads, function (h) { h.removeAttribute('aria-sort'); });
    th.setAttribute('aria-sort', asc ? 'ascending' : 'descending');
    var grouped = table.tBodies.length > 1 || table.classList.contains('grouped');
    var parent = grouped ? table : table.tBodies[0];
    var items = Array.prototype.slice.call(grouped ? table.tBodies : table.tBodies[0].rows);
    var decorated = items.map(function (item, i) {
      return { item: item, k: key(grouped ? item.rows[0] : item, col), i: i };
    });
    decorated.sort(function (a, b) { var c = compare(a.k, b.k); return (asc ? c : -c) || a.i - b.i; });
    decorated.forEach(function (d) { parent.appendChild(d.item); });
  }
  document.querySelectorAll('table.sortable').forEach(function (table) {
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th, col) {
      th.addEventListener('click', function () { sortTable(table, th, col); });
    });
  });

  function applyFilters() {
    var only = document.querySelector('input.detectors-only');
    var text = document.querySelector('input.label-filter');
    document.body.classList.toggle('detectors-only', !!(only && only.checked));
    var needle = text ? text.value.trim().toLowerCase() : '';
    document.querySelectorAll('table.grouped tbody').forEach(function (tb) {
      var label = tb.querySelector('td.label');
      var hit = !needle || (label && label.textContent.toLowerCase().indexOf(needle) >= 0);
      tb.classList.toggle('filtered', !hit);
    });
  }
  document.querySelectorAll('input.detectors-only, input.label-filter').forEach(function (box) {
    box.addEventListener('input', applyFilters);
    box.addEventListener('change', applyFilters);
  });

  function closeLightbox() {
    var box = document.querySelector('.lightbox');
    if (box) { box.parentNode.removeChild(box); }
  }
  function openLightbox(img) {
    closeLightbox();
    var t = parseInt(img.getAttribute('data-tile'), 10) || img.naturalHeight;
    var g = parseInt(img.getAttribute('data-gap'), 10) || 0;
    var cols = Math.max(1, Math.round((img.naturalWidth + g) / (t + g)));
    var rows = Math.max(1, Math.round((img.naturalHeight + g) / (t + g)));
    var z = 2, box = document.createElement('div'), tiles = document.createElement('div');
    var caption = document.createElement('p');
    box.className = 'lightbox';
    tiles.className = 'tiles';
    caption.className = 'caption';
    caption.textContent = img.alt + ' (click or press Escape to close)';
    for (var r = 0; r < rows; r++) {
      for (var c = 0; c < cols; c++) {
        var tile = document.createElement('div');
        tile.className = 'tile';
        tile.style.width = tile.style.height = (t * z) + 'px';
        tile.style.backgroundImage = 'url("' + img.currentSrc.replace(/"/g, '%22') + '")';
        tile.style.backgroundSize = (img.naturalWidth * z) + 'px ' + (img.naturalHeight * z) + 'px';
        tile.style.backgroundPosition = (-c * (t + g) * z) + 'px ' + (-r * (t + g) * z) + 'px';
        tiles.appendChild(tile);
      }
    }
    box.appendChild(caption);
    box.appendChild(tiles);
    box.addEventListener('click', closeLightbox);
    document.body.appendChild(box);
  }
  document.addEventListener('click', function (e) {
    if (e.target.matches && e.target.matches('img.strip')) { openLightbox(e.target); }
  });
  document.addEventListener('keydown', function (e) { if (e.key === 'Escape') { closeLightbox(); } });
})();

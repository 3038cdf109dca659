/* Cells cut with an ellipsis by admin.css get their full text as a tooltip. */
(function () {
  function titles() {
    var cells = document.querySelectorAll("#result_list td, #result_list th, .section-table td, .inline-group .tabular td p");
    cells.forEach(function (cell) {
      if (!cell.title && cell.scrollWidth > cell.clientWidth) cell.title = cell.textContent.trim();
    });
  }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", titles);
  else titles();
})();

// Reading-room shortcuts: s sign as is, Ctrl+Enter sign with edits, e edit, r reject, 1-5 window, z zoom, w worklist.
document.addEventListener("keydown", function (ev) {
  var img = document.getElementById("source-image"), typing = /INPUT|TEXTAREA/.test(ev.target.tagName);
  if (ev.key === "Enter" && ev.ctrlKey && document.getElementById("sign-edited")) { ev.preventDefault(); document.getElementById("sign-edited").click(); return; }
  if (typing || ev.ctrlKey || ev.altKey || ev.metaKey) return;
  var click = {s: "sign-as-is"}[ev.key], focus = {e: "text", r: "reason"}[ev.key];
  if (click && document.getElementById(click)) { ev.preventDefault(); document.getElementById(click).click(); }
  else if (focus && document.getElementById(focus)) { ev.preventDefault(); document.getElementById(focus).focus(); }
  else if (ev.key === "w") { location.href = "/"; }
  else if (ev.key === "z" && img) { img.classList.toggle("zoomed"); }
  else if (/^[1-9]$/.test(ev.key) && img) { var b = document.querySelectorAll(".window")[+ev.key - 1]; if (b) b.click(); }
});
document.addEventListener("click", function (ev) {
  var img = document.getElementById("source-image");
  if (ev.target.classList && ev.target.classList.contains("window") && img) { img.src = img.dataset.base + "?window=" + ev.target.dataset.window; }
  else if ((ev.target.id === "zoom" || ev.target === img) && img) { img.classList.toggle("zoomed"); }
});

// mmsafe annotate.html: renders the items of the JSON block "annotate-data" and keeps the annotator's labels.
// Every text from the run (prompts, answers, names) goes into the page with textContent only; image sources are
// only the data:image/ URIs mmsafe wrote. Labels live in localStorage under the export id and are saved as a file.
(function () {
  "use strict";
  var data = JSON.parse(document.getElementById("annotate-data").textContent);
  var scheme = data.scheme;
  var KEY = "mmsafe-annotate:" + data["export"];
  var state = { annotator: "", labels: {}, notes: {}, times: {} };
  var statusEl = document.getElementById("status");
  var nameEl = document.getElementById("annotator");

  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) { e.className = cls; }
    if (text !== undefined) { e.textContent = text; }
    return e;
  }
  function status(msg, ok) {
    statusEl.textContent = msg;
    statusEl.className = ok ? "ok" : "";
  }
  function persist() {
    try { localStorage.setItem(KEY, JSON.stringify(state)); } catch (err) { status("labels not kept: " + err); }
  }
  function restore() {
    try {
      var saved = JSON.parse(localStorage.getItem(KEY) || "null");
      if (saved && typeof saved === "object") {
        state.annotator = typeof saved.annotator === "string" ? saved.annotator : "";
        ["labels", "notes", "times"].forEach(function (k) {
          if (saved[k] && typeof saved[k] === "object") { state[k] = saved[k]; }
        });
      }
    } catch (err) { status("stored labels could not be read: " + err); }
  }
  function complete(id) {
    var v = state.labels[id];
    if (!v) { return false; }
    return scheme.fields.every(function (f) { return f.labels.indexOf(v[f.name]) >= 0; });
  }
  function progress() {
    var done = data.items.filter(function (it) { return complete(it.id); }).length;
    document.getElementById("progress").textContent = done + " of " + data.items.length + " labelled";
    data.items.forEach(function (it, i) {
      document.getElementById("item-" + i).classList.toggle("done", complete(it.id));
    });
  }

  var viewer = document.getElementById("viewer");
  var viewerImg = document.getElementById("viewer-img");
  var viewerNote = document.getElementById("viewer-note");
  viewer.addEventListener("click", function () { viewer.classList.add("hidden"); viewerImg.removeAttribute("src"); });

  function image(sha) {
    var im = data.images[sha] || {};
    var thumb = String(im.thumb || "");
    var full = String(im.full || "");
    if (thumb.indexOf("data:image/") !== 0) {
      return el("span", "noimg", "[image " + String(sha).slice(0, 12) + " not shown: missing or not displayable]");
    }
    var img = el("img", "thumb");
    img.alt = "image " + String(sha).slice(0, 12);
    img.src = thumb;
    img.addEventListener("click", function () {
      var big = full.indexOf("data:image/") === 0 ? full : thumb;
      viewerImg.src = big;
      viewerNote.textContent = big === full ? "" : "Large image: full size in images/" + String(im.file || "");
      viewer.classList.remove("hidden");
    });
    return img;
  }

  function renderItem(it, i) {
    var box = el("section", "item");
    box.id = "item-" + i;
    box.dataset.item = it.id;
    box.appendChild(el("h2", "", "Item " + (i + 1) + " of " + data.items.length));
    if (it.cell) {
      var c = it.cell;
      box.appendChild(el("p", "cell", "model " + c.model + " · benchmark " + c.benchmark + " · attack " + c.attack +
        " · defense " + c.defense));
    }
    box.appendChild(el("h3", "role", "Request"));
    it.prompt.forEach(function (turn) {
      var t = el("div", "turn");
      if (it.prompt.length > 1) { t.appendChild(el("div", "role", turn.role)); }
      turn.parts.forEach(function (p) {
        t.appendChild(p.type === "image" ? image(p.sha256) : el("div", "text", p.text));
      });
      box.appendChild(t);
    });
    box.appendChild(el("h3", "role", "Answer"));
    box.appendChild(el("div", "response", it.response));
    scheme.fields.forEach(function (f) {
      var fs = el("fieldset");
      fs.appendChild(el("legend", "", f.question));
      f.labels.forEach(function (lab, j) {
        var label = el("label");
        var input = el("input");
        input.type = "radio";
        input.name = "l-" + i + "-" + f.name;
        input.value = lab;
        input.dataset.field = f.name;
        input.title = f.meanings[j];
        var cur = state.labels[it.id];
        input.checked = !!cur && cur[f.name] === lab;
        input.addEventListener("change", function () {
          var v = state.labels[it.id] || {};
          v[f.name] = lab;
          state.labels[it.id] = v;
          state.times[it.id] = Date.now() / 1000;
          persist();
          progress();
        });
        label.appendChild(input);
        label.appendChild(document.createTextNode(" " + lab.replace(/_/g, " ")));
        fs.appendChild(label);
      });
      box.appendChild(fs);
    });
    var note = el("textarea", "note");
    note.placeholder = "Note (optional)";
    note.maxLength = 2000;
    note.value = state.notes[it.id] || "";
    note.addEventListener("input", function () { state.notes[it.id] = note.value; persist(); });
    box.appendChild(note);
    return box;
  }

  function render() {
    var main = document.getElementById("items");
    while (main.firstChild) { main.removeChild(main.firstChild); }
    data.items.forEach(function (it, i) { main.appendChild(renderItem(it, i)); });
    nameEl.value = state.annotator;
    progress();
  }

  nameEl.addEventListener("input", function () { state.annotator = nameEl.value; persist(); });

  document.getElementById("save").addEventListener("click", function () {
    var who = state.annotator.trim();
    if (!who) { status("Type your name first."); nameEl.focus(); return; }
    var labels = [];
    var incomplete = 0;
    data.items.forEach(function (it) {
      if (complete(it.id)) {
        var values = {};
        scheme.fields.forEach(function (f) { values[f.name] = state.labels[it.id][f.name]; });
        labels.push({ item: it.id, values: values, note: state.notes[it.id] || "", time: state.times[it.id] || null });
      } else if (state.labels[it.id]) { incomplete += 1; }
    });
    var doc = { format: "mmsafe-labels/1", "export": data["export"], scheme: scheme.name, annotator: who,
      saved: new Date().toISOString(), labels: labels };
    var blob = new Blob([JSON.stringify(doc, null, 1)], { type: "application/json" });
    var a = document.createElement("a");
    a.href = URL.createObjectURL(blob);
    a.download = "labels-" + who.replace(/[^A-Za-z0-9_-]+/g, "_") + "-" + data["export"] + ".json";
    document.body.appendChild(a);
    a.click();
    document.body.removeChild(a);
    setTimeout(function () { URL.revokeObjectURL(a.href); }, 10000);
    status("Saved " + labels.length + " labels" + (incomplete ? " (" + incomplete + " incomplete left out)" : "") +
      " as " + a.download, true);
  });

  document.getElementById("load").addEventListener("change", function (ev) {
    var file = ev.target.files && ev.target.files[0];
    if (!file) { return; }
    var reader = new FileReader();
    reader.onload = function () {
      var doc;
      try { doc = JSON.parse(String(reader.result)); } catch (err) { status("Not a labels file: " + err); return; }
      if (!doc || doc.format !== "mmsafe-labels/1" || !Array.isArray(doc.labels)) {
        status("Not an mmsafe labels file."); return;
      }
      if (doc.scheme !== scheme.name) { status("That file is for scheme " + doc.scheme + ", not " + scheme.name); return; }
      var known = {};
      data.items.forEach(function (it) { known[it.id] = true; });
      var n = 0;
      doc.labels.forEach(function (l) {
        if (!l || !known[l.item] || !l.values || typeof l.values !== "object") { return; }
        var v = {};
        scheme.fields.forEach(function (f) {
          if (f.labels.indexOf(l.values[f.name]) >= 0) { v[f.name] = l.values[f.name]; }
        });
        state.labels[l.item] = v;
        if (typeof l.note === "string" && l.note) { state.notes[l.item] = l.note; }
        if (typeof l.time === "number") { state.times[l.item] = l.time; }
        n += 1;
      });
      if (!state.annotator && typeof doc.annotator === "string") { state.annotator = doc.annotator; }
      persist();
      render();
      status("Loaded " + n + " labels" + (doc["export"] !== data["export"] ? " (from another export)" : ""), true);
    };
    reader.readAsText(file);
  });

  restore();
  render();
  document.body.dataset.ready = "1";
})();

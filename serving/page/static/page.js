// Prediction page: sends each image to the standard REST :predict (the path hospitals use),
// then asks :explain for the Grad-CAM heatmap. Every failure becomes a readable message.
"use strict";

(function () {
  var params = new URLSearchParams(window.location.search);
  var MODEL = params.get("model") || "leukemia";
  var LABEL = params.get("label") || "";
  var VERSION = params.get("version") || "";

  // Plain-language names for the dataset's classes (the model's own names are shown too).
  var STAGE_NAMES = {
    Benign: "Benign (hematogones)",
    Early: "Early Pre-B ALL",
    Pre: "Pre-B ALL",
    Pro: "Pro-B ALL"
  };
  var FORMATS = "JPEG, PNG, BMP, GIF or WebP";
  var model = null; // the answer of /ui/model: version, label, classes, threshold, limits

  function $(id) { return document.getElementById(id); }

  function el(tag, className, text) {
    var node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = text;
    return node;
  }

  function stageName(name) { return STAGE_NAMES[name] || name; }

  function formatBytes(n) {
    if (n >= 1024 * 1024) return (n / (1024 * 1024)).toFixed(1) + " MB";
    if (n >= 1024) return Math.round(n / 1024) + " KB";
    return n + " bytes";
  }

  function pct(p) {
    var v = p * 100;
    return (v > 0 && v < 1 ? "<1" : v > 99 && v < 100 ? ">99" : Math.round(v)) + "%";
  }

  function showBanner(message) {
    var banner = $("banner");
    banner.textContent = message;
    banner.hidden = !message;
  }

  // An error the page can explain: a short title for a clinician, the server's words as detail.
  function PageError(title, detail) { this.title = title; this.detail = detail || ""; }

  var UNREACHABLE = "Cannot reach the model server. Check that it is running and try again; if it persists, contact IT support.";

  // fetch JSON; turns network failures and error bodies into PageError.
  function requestJson(url, options) {
    return requestJsonWithHeaders(url, options).then(function (answer) { return answer.body; });
  }

  // fetch JSON, also handing back the response headers (X-Request-Id of a :predict answer).
  function requestJsonWithHeaders(url, options) {
    return fetch(url, options).then(function (response) {
      return response.text().then(function (text) {
        var body = null;
        try { body = text ? JSON.parse(text) : null; } catch (e) { body = null; }
        if (response.ok && body) return { body: body, headers: response.headers };
        var serverMessage = body && body.error ? String(body.error) : (text || "").slice(0, 300);
        var err = new PageError(explainStatus(response.status, serverMessage), serverMessage);
        err.status = response.status;
        throw err;
      });
    }, function () {
      throw new PageError(UNREACHABLE, "");
    });
  }

  function explainStatus(status, message) {
    var m = (message || "").toLowerCase();
    if (status === 413 || m.indexOf("limit") >= 0 || m.indexOf("too large") >= 0 || m.indexOf("exceeds") >= 0) {
      return "This image is too large for the server.";
    }
    if (status === 400) {
      if (m.indexOf("decode") >= 0 || m.indexOf("image") >= 0 || m.indexOf("format") >= 0) {
        return "This file could not be read as an image. Please use a " + FORMATS + " file.";
      }
      return "The server could not process this file.";
    }
    if (status === 404) return "The model is not available on this server right now.";
    if (status === 429) return "The server is busy. Please wait a moment and try again.";
    if (status === 503 || status === 504 || status === 502) return "The model server is temporarily unavailable. Please try again shortly.";
    if (status === 501) return "This server does not support that request.";
    return "The server could not analyse this image (error " + status + ").";
  }

  function modelUrl() {
    var url = "/ui/models/" + encodeURIComponent(MODEL);
    if (VERSION) url += "/versions/" + encodeURIComponent(VERSION);
    else if (LABEL) url += "/labels/" + encodeURIComponent(LABEL);
    return url;
  }

  function loadModel() {
    return requestJson(modelUrl()).then(function (info) {
      model = info;
      var status = $("model-status");
      status.textContent = "Model " + info.name + " \u00b7 version " + info.version + (info.label ? " (" + info.label + ")" : "");
      status.className = "model-status ok";
      showLabelChoice(info);
      showReviewerPanel(info);
      $("limits").textContent = FORMATS + "; up to " + formatBytes(info.max_upload_bytes) + " each. Several at once is fine.";
      showBanner("");
      return info;
    }, function (err) {
      model = null;
      var status = $("model-status");
      status.textContent = "Model unavailable";
      status.className = "model-status down";
      showBanner(err.title + (err.detail ? " (" + err.detail + ")" : ""));
      throw err;
    });
  }

  // With several labels (stable, canary) the reviewer may choose which one answers; the default is stable.
  function showLabelChoice(info) {
    var labels = info.labels || {};
    var names = Object.keys(labels).sort();
    var box = $("label-choice");
    var select = $("label-select");
    if (names.length < 2) { box.hidden = true; return; }
    select.textContent = "";
    names.forEach(function (name) {
      var option = el("option", null, name + " (version " + labels[name] + ")");
      option.value = name;
      option.selected = name === info.label;
      select.appendChild(option);
    });
    box.hidden = false;
  }

  // With a cases folder on the server, a pathologist may confirm or correct each answer (POST /v1/cases).
  var REVIEWER_KEY = "leukoflow.reviewer";
  var SITE_KEY = "leukoflow.site";

  function remembered(key) {
    try { return window.localStorage.getItem(key) || ""; } catch (e) { return ""; }
  }

  function remember(key, value) {
    try { window.localStorage.setItem(key, value); } catch (e) { /* private mode: nothing remembered */ }
  }

  function showReviewerPanel(info) {
    $("reviewer-panel").hidden = !info.cases;
    if (info.cases) {
      if (!$("reviewer").value) $("reviewer").value = remembered(REVIEWER_KEY);
      if (!$("site").value) $("site").value = remembered(SITE_KEY);
      $("storage-note").textContent = "Images are not stored by this page unless you confirm or correct an answer: " +
        "then the image and your label are kept on this server as a case for retraining.";
    } else {
      $("storage-note").textContent = "Images are not stored by this page.";
    }
  }

  // What the case store did with a label, in a reviewer's words.
  function caseOutcomeText(answer, stage) {
    switch (answer.outcome) {
      case "added":
        return "Saved as a case: " + stage + ", labelled by " + answer.reviewer + " (" + answer.site + ").";
      case "already_a_case":
        return "Already a case with this label: nothing new was added.";
      case "duplicate":
        return "This image is a copy of one already in the data with the same label (" + answer.of + "): nothing new was added.";
      case "conflict":
        return "Conflict: this image already has another label: " + answer["with"] + ". It is kept out of " +
          "training until the labels are reconciled.";
      case "quarantined":
        return "Not kept for training: the image failed the data checks (" + answer.reason + ").";
      default:
        return "The server answered: " + JSON.stringify(answer);
    }
  }

  function reviewBox(parts, info, prediction, b64) {
    var box = el("div", "review");
    box.setAttribute("data-testid", "review");
    var labels = info.case_labels || info.class_names || [];
    var outcome = el("p", "review-outcome");
    outcome.setAttribute("role", "status");
    outcome.setAttribute("aria-live", "polite");
    var buttons = [];

    function send(label) {
      var reviewer = $("reviewer").value.trim();
      var site = $("site").value.trim();
      outcome.className = "review-outcome";
      outcome.removeAttribute("data-outcome");
      if (!reviewer || !site) {
        outcome.classList.add("problem");
        outcome.textContent = "Enter your name and your site above first.";
        (reviewer ? $("site") : $("reviewer")).focus();
        return Promise.resolve();
      }
      remember(REVIEWER_KEY, reviewer);
      remember(SITE_KEY, site);
      buttons.forEach(function (b) { b.disabled = true; });
      outcome.textContent = "Saving\u2026";
      var body = { image: { b64: b64 }, label: label, site: site, reviewer: reviewer, filename: parts.fileName };
      if (prediction.requestId) body.request_id = prediction.requestId;
      return requestJson("/v1/cases", {
        method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body)
      }).then(function (answer) {
        outcome.setAttribute("data-outcome", answer.outcome);
        outcome.classList.add(answer.outcome === "added" || answer.outcome === "already_a_case" ? "done" : "problem");
        outcome.textContent = caseOutcomeText(answer, stageName(label));
      }, function (err) {
        outcome.setAttribute("data-outcome", "error");
        outcome.classList.add("problem");
        outcome.textContent = "The label was not saved: " + (err.detail || err.title);
      }).then(function () {
        buttons.forEach(function (b) { b.disabled = false; });
      });
    }

    box.appendChild(el("p", "review-title", prediction.refer ? "Pathologist review: label this image"
                                                             : "Pathologist review"));
    var row = el("div", "review-actions");
    if (!prediction.refer) {
      var confirm = el("button", "review-confirm", "Confirm " + stageName(prediction.label));
      confirm.type = "button";
      confirm.setAttribute("data-label", prediction.label);
      confirm.addEventListener("click", function () { send(prediction.label); });
      buttons.push(confirm);
      row.appendChild(confirm);
    }
    var choice = el("label", "review-correct", prediction.refer ? "Label as " : "Correct to ");
    var select = el("select");
    labels.forEach(function (name) {
      if (!prediction.refer && name === prediction.label) return;  // confirming is the button beside
      var option = el("option", null, stageName(name));
      option.value = name;  // the data's class name (components/domain.py), shown by its stage name
      select.appendChild(option);
    });
    choice.appendChild(select);
    row.appendChild(choice);
    var save = el("button", "review-save", prediction.refer ? "Save label" : "Save correction");
    save.type = "button";
    save.addEventListener("click", function () { send(select.value); });
    buttons.push(save);
    row.appendChild(save);
    box.appendChild(row);
    box.appendChild(outcome);
    parts.side.appendChild(box);
  }

  function versionPath(info) {
    return "/v1/models/" + encodeURIComponent(info.name) + "/versions/" + encodeURIComponent(info.version);
  }

  function readBase64(file) {
    return new Promise(function (resolve, reject) {
      var reader = new FileReader();
      reader.onload = function () {
        var url = String(reader.result || "");
        resolve(url.slice(url.indexOf(",") + 1));
      };
      reader.onerror = function () { reject(new PageError("This file could not be read from your computer.", "")); };
      reader.readAsDataURL(file);
    });
  }

  // Predict pinned to the version /ui/model resolved, so the version shown is the one that answered;
  // if that version was just swapped out, look the label up again once and retry.
  function predict(b64, retried) {
    var ready = model ? Promise.resolve(model) : loadModel();
    return ready.then(function (info) {
      var body = JSON.stringify({ instances: [{ b64: b64 }] });
      return requestJsonWithHeaders(versionPath(info) + ":predict", {
        method: "POST", headers: { "Content-Type": "application/json" }, body: body
      }).then(function (answer) {
        var prediction = parsePrediction(answer.body, info);
        prediction.requestId = answer.headers.get("X-Request-Id") || "";
        return { info: info, prediction: prediction };
      }, function (err) {
        if (err.status === 404 && !retried) { model = null; return predict(b64, true); }
        throw err;
      });
    });
  }

  function parsePrediction(answer, info) {
    var row = answer && answer.predictions && answer.predictions[0];
    var probs = row && (Array.isArray(row) ? row : row.probabilities);
    if (!probs || !probs.length) throw new PageError("The server's answer could not be read.", JSON.stringify(answer).slice(0, 200));
    var names = info.class_names || [];
    var best = 0;
    for (var i = 1; i < probs.length; i++) if (probs[i] > probs[best]) best = i;
    var result = { probabilities: probs, index: best, label: (row && row.label) || names[best] || String(best) };
    // A calibrated model also says when it does not know (docs/architecture.md, "The serving contract");
    // an older model's answer has none of these and is shown as before.
    if (row && !Array.isArray(row) && typeof row.refer === "boolean") {
      result.refer = row.refer;
      result.inDistribution = row.in_distribution !== false;
      result.leukocyteInView = row.leukocyte_in_view !== false; // absent from models without the check
      result.oodScore = row.ood_score;
      result.predictionSet = [];
      (row.prediction_set || []).forEach(function (inside, i) {
        if (inside) result.predictionSet.push(names[i] || String(i));
      });
    }
    return result;
  }

  // Why the model refers an image, in a clinician's words (the same reasons as `leukoflow predict`).
  function referReason(prediction) {
    if (!prediction.inDistribution) {
      return "This image is not like the images the model was trained on, so the model cannot judge it. " +
        "Check the image (stain, magnification, microscope) and have a pathologist review it.";
    }
    if (prediction.leukocyteInView === false) {
      return "No white cell in view: the stage is read from the leukocytes, and the model finds none in this image. " +
        "Choose a field with white cells, or have a pathologist review it.";
    }
    var set = prediction.predictionSet || [];
    if (!set.length) return "No stage fits with the required confidence.";
    if (set.length > 1) {
      var named = set.map(stageName);
      return "The model cannot tell between " + named.slice(0, -1).join(", ") + " and " + named[named.length - 1] + ".";
    }
    return "The model refers this image.";
  }

  function referBox(prediction) {
    var box = el("div", "refer");
    box.setAttribute("role", "status");
    box.setAttribute("data-testid", "refer");
    box.setAttribute(
      "data-reason",
      !prediction.inDistribution
        ? "out_of_distribution"
        : prediction.leukocyteInView === false ? "no_white_cell" : "prediction_set"
    );
    var icon = el("span", "icon", "\u26a0");
    icon.setAttribute("aria-hidden", "true");
    var title = el("strong", "refer-title");
    title.appendChild(icon);
    title.appendChild(document.createTextNode(" Refer to a pathologist: no stage given"));
    box.appendChild(title);
    box.appendChild(el("span", "refer-reason", referReason(prediction)));
    return box;
  }

  // The server computes few explanations at once (max_concurrent_explains, 1 by default) and answers
  // 429 beyond that: this page asks for one at a time (several uploads would otherwise refuse each
  // other's heatmaps) and retries a 429 (another reviewer's) a few times with backoff.
  var explainQueue = Promise.resolve();
  var EXPLAIN_RETRIES = 5;

  function explain(info, b64) {
    var run = function () { return requestExplain(info, b64, 0); };
    var next = explainQueue.then(run, run);
    explainQueue = next.catch(function () { /* the card shows it */ });
    return next;
  }

  function requestExplain(info, b64, attempt) {
    return requestJson(versionPath(info) + ":explain", {
      method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ instances: [{ b64: b64 }] })
    }).then(function (answer) { return answer.explanations[0]; }, function (err) {
      if (err.status !== 429 || attempt >= EXPLAIN_RETRIES) throw err;
      return new Promise(function (resolve) { setTimeout(resolve, 500 * Math.pow(2, attempt)); })
        .then(function () { return requestExplain(info, b64, attempt + 1); });
    });
  }

  function errorBox(err) {
    var box = el("div", "error");
    box.setAttribute("role", "alert");
    box.appendChild(el("strong", null, err.title || "Something went wrong with this image."));
    if (err.detail) box.appendChild(el("span", "detail", "Server message: " + err.detail));
    return box;
  }

  function newCard(file) {
    var card = el("article", "card");
    card.setAttribute("aria-busy", "true");
    var figure = el("figure", "figure");
    var side = el("div", "verdict");
    side.appendChild(el("h2", "file-name", file.name));
    var status = el("p", "status", "Analysing\u2026");
    side.appendChild(status);
    card.appendChild(figure);
    card.appendChild(side);
    $("results").prepend(card);
    $("clear").hidden = false;
    return { card: card, figure: figure, side: side, status: status };
  }

  function showPreview(parts, file) {
    var img = el("img", "preview");
    img.alt = "Uploaded image " + file.name;
    img.onerror = function () {
      var none = el("div", "no-preview", "No preview: the browser cannot display this file.");
      if (img.parentNode) img.parentNode.replaceChild(none, img);
    };
    img.src = URL.createObjectURL(file);
    parts.figure.appendChild(img);
    parts.img = img;
    parts.originalSrc = img.src;
  }

  function fail(parts, err) {
    parts.card.classList.add("failed");
    parts.card.setAttribute("aria-busy", "false");
    parts.status.remove();
    parts.side.appendChild(errorBox(err instanceof PageError ? err : new PageError("Something went wrong with this image.", String(err))));
  }

  function renderResult(parts, info, prediction) {
    var probs = prediction.probabilities;
    var top = probs[prediction.index];
    var low = top < info.low_confidence_threshold;
    parts.status.remove();
    parts.card.setAttribute("aria-busy", "false");
    if (prediction.refer) {
      // Referred: the reason instead of a stage headline; the bars stay, for the reviewer's information.
      parts.card.classList.add("referred");
      parts.side.appendChild(referBox(prediction));
      parts.side.appendChild(el("p", "bars-caption", "Confidence for every class, for information only:"));
      renderBars(parts, info, prediction, "Confidence for every class (for information only: the image is referred)");
      return;
    }
    if (low) parts.card.classList.add("low");

    var stage = el("p", "stage");
    stage.setAttribute("data-testid", "stage");
    var strong = el("strong", "stage-name", stageName(prediction.label));
    strong.setAttribute("data-class", prediction.label);
    stage.appendChild(el("span", "stage-label", "Predicted stage"));
    stage.appendChild(strong);
    parts.side.appendChild(stage);
    parts.side.appendChild(el("p", "confidence", "Confidence " + pct(top)));

    if (low) {
      var flag = el("p", "flag");
      flag.setAttribute("role", "status");
      flag.setAttribute("data-testid", "low-confidence");
      var icon = el("span", "icon", "\u26a0");
      icon.setAttribute("aria-hidden", "true");
      flag.appendChild(icon);
      flag.appendChild(el("span", null, "Low confidence: refer to a pathologist"));
      parts.side.appendChild(flag);
    }

    renderBars(parts, info, prediction, "Confidence for every class");
  }

  function renderBars(parts, info, prediction, caption) {
    var probs = prediction.probabilities;
    var names = info.class_names || [];
    var list = el("ul", "bars");
    list.setAttribute("aria-label", caption);
    for (var i = 0; i < probs.length; i++) {
      var name = names[i] || String(i);
      var item = el("li", !prediction.refer && i === prediction.index ? "best" : "");
      item.appendChild(el("span", "cls", stageName(name)));
      var track = el("span", "track");
      track.setAttribute("aria-hidden", "true");
      var fill = el("span", "fill bar");
      fill.style.width = Math.max(0, Math.min(100, probs[i] * 100)).toFixed(1) + "%";
      track.appendChild(fill);
      item.appendChild(track);
      item.appendChild(el("span", "pct", pct(probs[i])));
      list.appendChild(item);
    }
    parts.side.appendChild(list);
    parts.side.appendChild(el("p", "meta", "Answered by model " + info.name + ", version " + info.version +
      (info.label ? " (label \u201c" + info.label + "\u201d)" : "") + "." +
      // A model that refers replaces the low-confidence threshold with its referral; older exports still show it.
      (prediction.refer === undefined ? " Low-confidence threshold " + pct(info.low_confidence_threshold) + "." :
        " This model refers images unlike its training images, and images no single stage fits.")));
  }

  function addHeatmapToggle(parts, info, b64) {
    var button = el("button", "toggle", "Loading heatmap\u2026");
    button.type = "button";
    button.disabled = true;
    button.setAttribute("aria-pressed", "false");
    parts.figure.appendChild(button);
    if (!info.explain) {
      button.textContent = "Heatmap not available for this model";
      return;
    }
    explain(info, b64).then(function (result) {
      var overlay = "data:image/png;base64," + result.overlay_png_b64;
      button.disabled = false;
      button.textContent = "Show where the model looked";
      button.addEventListener("click", function () {
        var on = button.getAttribute("aria-pressed") !== "true";
        button.setAttribute("aria-pressed", on ? "true" : "false");
        button.textContent = on ? "Show the original image" : "Show where the model looked";
        if (parts.img) {
          parts.img.src = on ? overlay : parts.originalSrc;
          parts.img.alt = on ? "Heatmap of the regions that most influenced the prediction, over " + parts.fileName
                             : "Uploaded image " + parts.fileName;
        }
        legend.hidden = !on;
      });
      var legend = el("div", "legend");
      legend.hidden = true;
      legend.appendChild(el("span", null, parts.card.classList.contains("referred")
        ? "Influence on the most likely class (the image is referred)" : "Influence on the predicted stage"));
      legend.appendChild(el("span", "scale"));
      var ends = el("span", "ends");
      ends.appendChild(el("span", null, "low"));
      ends.appendChild(el("span", null, "high"));
      legend.appendChild(ends);
      var h = result.heatmap || {};
      if (typeof h.cell_attention === "number" && h.cell_area > 0) {
        // Attention share vs area share: 1x is what a map spread evenly over the image would give.
        var ratio = h.cell_attention / h.cell_area;
        var caution = ratio < 0.8;
        var verdict = caution ? " The model looks mostly outside the stained cells (background or red cells): review with extra care."
                    : ratio >= 1.5 ? " The model concentrates on the stained cells." : "";
        legend.appendChild(el("p", "attention" + (caution ? " caution" : ""),
          pct(h.cell_attention) + " of the attention falls on the strongly stained cells, which cover " +
          pct(h.cell_area) + " of the image." + verdict));
      }
      parts.figure.appendChild(legend);
    }, function (err) {
      button.textContent = "Heatmap unavailable";
      button.title = err.detail || err.title;
      parts.figure.appendChild(el("p", "legend", "Heatmap unavailable: " + (err.detail || err.title)));
    });
  }

  function analyse(file) {
    var parts = newCard(file);
    parts.fileName = file.name;
    var limit = (model && model.max_upload_bytes) || 10 * 1024 * 1024;
    if (file.size === 0) {
      fail(parts, new PageError("This file is empty.", ""));
      return Promise.resolve();
    }
    if (file.size > limit) {
      fail(parts, new PageError("This image is too large (" + formatBytes(file.size) + "). The limit is " +
        formatBytes(limit) + ": please export a smaller JPEG or PNG.", ""));
      return Promise.resolve();
    }
    if (/\.tiff?$/i.test(file.name)) {
      fail(parts, new PageError("TIFF images cannot be sent from the browser. Please convert to PNG or JPEG " +
        "(or use the leukoflow predict command, which converts TIFF).", ""));
      return Promise.resolve();
    }
    showPreview(parts, file);
    return readBase64(file).then(function (b64) {
      return predict(b64, false).then(function (result) {
        renderResult(parts, result.info, result.prediction);
        if (result.info.cases) reviewBox(parts, result.info, result.prediction, b64);
        addHeatmapToggle(parts, result.info, b64);
      });
    }).catch(function (err) { fail(parts, err); });
  }

  function analyseAll(files) {
    var list = Array.prototype.slice.call(files || []);
    // One at a time: keeps the order readable and the server's queue short.
    return list.reduce(function (chain, file) {
      return chain.then(function () { return analyse(file); });
    }, Promise.resolve());
  }

  function init() {
    var input = $("file");
    var drop = $("drop");
    input.addEventListener("change", function () {
      analyseAll(input.files).then(function () { input.value = ""; });
    });
    ["dragenter", "dragover"].forEach(function (type) {
      drop.addEventListener(type, function (e) { e.preventDefault(); drop.classList.add("over"); });
    });
    ["dragleave", "drop"].forEach(function (type) {
      drop.addEventListener(type, function (e) { e.preventDefault(); drop.classList.remove("over"); });
    });
    drop.addEventListener("drop", function (e) {
      if (e.dataTransfer && e.dataTransfer.files) analyseAll(e.dataTransfer.files);
    });
    // A file dropped outside the drop zone must not navigate away from the results.
    window.addEventListener("dragover", function (e) { e.preventDefault(); });
    window.addEventListener("drop", function (e) { e.preventDefault(); });
    $("clear").addEventListener("click", function () {
      $("results").textContent = "";
      $("clear").hidden = true;
    });
    $("label-select").addEventListener("change", function (e) {
      LABEL = e.target.value;
      VERSION = "";
      model = null;
      loadModel().catch(function () { /* the banner says it */ });
    });
    loadModel().catch(function () { /* the banner says it; uploads retry */ });
  }

  window.addEventListener("error", function (e) {
    showBanner("Something went wrong on this page (" + (e.message || "unknown error") + "). Please reload the page.");
  });
  window.addEventListener("unhandledrejection", function (e) {
    var r = e.reason;
    showBanner(r && r.title ? r.title : "Something went wrong on this page. Please reload the page.");
  });

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
  else init();
})();

// arbridge pay pages. Loaded from this origin only (the pages' CSP forbids inline code).
// The card number never passes through here: the hosted-fields frame belongs to the card
// gateway, and this script only asks it to submit and waits for "ready" (or an error).
"use strict";

(function () {
  const form = document.getElementById("pay-form") || document.getElementById("method-form");
  if (!form) return;
  const message = document.getElementById("message");
  const button = document.getElementById("pay-button");
  const gatewayOrigin = form.dataset.gatewayOrigin;
  const exponent = Number(form.dataset.exponent || "2");
  let readyFor = null; // the new method whose hosted fields reported a filled token
  let submitting = false;

  function chosenMethod() {
    const checked = form.querySelector('input[name="method"]:checked');
    return checked ? checked.value : "";
  }

  // The frame of a new card or bank account when one is chosen, else null.
  function chosenFrame() {
    const box = form.querySelector('.new-source[data-method="' + chosenMethod() + '"]');
    return box ? box.querySelector("iframe") : null;
  }

  function showChosen() {
    const chosen = chosenMethod();
    for (const box of form.querySelectorAll(".new-source")) box.hidden = box.dataset.method !== chosen;
    const save = document.getElementById("save-new");
    if (save) save.hidden = chosenFrame() === null;
  }

  // Text like "1,234.50" to integer minor units, or null when it is not an amount.
  // Commas only as thousands grouping (as the page shows amounts): "12,50" could mean
  // 12.50 or 1250, so it is no amount here, as the server refuses it.
  function toMinor(text) {
    let clean = text.trim().replace(/^[$€£¥]/, "").trim();
    if (/^\d{1,3}(,\d{3})+(\.\d*)?$/.test(clean)) clean = clean.replace(/,/g, "");
    const match = /^(\d+)(?:\.(\d*))?$/.exec(clean);
    if (!match) return null;
    const fraction = (match[2] || "");
    if (fraction.length > exponent) return null;
    return Number(match[1]) * 10 ** exponent + Number((fraction + "0".repeat(exponent)).slice(0, exponent) || "0");
  }

  function fromMinor(minor) {
    const whole = Math.floor(minor / 10 ** exponent).toLocaleString("en-US");
    if (exponent === 0) return whole;
    return whole + "." + String(minor % 10 ** exponent).padStart(exponent, "0");
  }

  function updateTotal() {
    const output = document.getElementById("total");
    if (!output) return;
    let total = 0;
    for (const row of form.querySelectorAll("tbody tr")) {
      const box = row.querySelector('input[name="invoice"][type="checkbox"]');
      const amount = row.querySelector("input.amount");
      if (box && !box.checked) continue;
      const minor = amount ? toMinor(amount.value) : null;
      if (minor === null) { output.textContent = "—"; return; }
      total += minor;
    }
    output.textContent = fromMinor(total);
    if (button && form.id === "pay-form") button.textContent = "Pay " + fromMinor(total) + " " + form.dataset.currency;
  }

  function busy(on) {
    submitting = on;
    if (!button) return;
    button.disabled = on;
    button.setAttribute("aria-busy", on ? "true" : "false");
  }

  window.addEventListener("message", (event) => {
    if (event.origin !== gatewayOrigin || !event.data) return;
    const frame = chosenFrame();
    if (!frame || event.source !== frame.contentWindow) return;
    if (event.data.type === "hosted-fields-ready") {
      readyFor = chosenMethod();
      message.textContent = "";
      busy(true);
      form.submit(); // a plain submit: the handler below does not run again
    } else if (event.data.type === "hosted-fields-error") {
      busy(false);
      message.textContent = "Check the details you entered: " + event.data.message;
      frame.focus();
    }
  });

  form.addEventListener("submit", (event) => {
    if (submitting) { event.preventDefault(); return; }
    const frame = chosenFrame();
    if (frame && readyFor !== chosenMethod()) {
      event.preventDefault();
      busy(true);
      message.textContent = "Checking the details you entered…";
      frame.contentWindow.postMessage({ type: "hosted-fields-submit" }, gatewayOrigin);
      return;
    }
    busy(true);
    message.textContent = form.id === "pay-form" ? "Processing your payment…" : "Saving…";
  });

  form.addEventListener("change", () => { showChosen(); updateTotal(); });
  form.addEventListener("input", updateTotal);
  showChosen();
  updateTotal();
})();

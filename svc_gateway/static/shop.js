// Small progressive enhancements; every page works without this file.
"use strict";

// <form data-confirm="Question?">: ask before submitting (deleting, emptying, cancelling).
// <form data-once>: a second submit while the first is on its way is ignored, and the
// button says so (the server's idempotency key makes a repeat harmless anyway).
document.addEventListener("submit", (event) => {
  const form = event.target;
  if (!(form instanceof HTMLFormElement)) {
    return;
  }
  const question = form.dataset.confirm;
  if (question && !window.confirm(question)) {
    event.preventDefault();
    return;
  }
  if (form.hasAttribute("data-once")) {
    if (form.dataset.submitted === "true") {
      event.preventDefault();
      return;
    }
    form.dataset.submitted = "true";
    for (const button of form.querySelectorAll("button")) {
      button.setAttribute("aria-disabled", "true");
    }
  }
});

// A product image that fails to load gives way to its generated picture.
function useFallback(image) {
  const fallback = image.dataset.fallback;
  if (fallback) {
    image.removeAttribute("data-fallback");
    image.src = fallback;
  }
}

for (const image of document.querySelectorAll("img[data-fallback]")) {
  if (image.complete && image.naturalWidth === 0) {
    useFallback(image);
  } else {
    image.addEventListener("error", () => useFallback(image), { once: true });
  }
}

// The catalogue's filters are folded away on a phone; on a wide screen they start unfolded.
if (window.matchMedia("(min-width: 56rem)").matches) {
  for (const panel of document.querySelectorAll("details[data-open-when-wide]")) {
    panel.open = true;
  }
}

// A page reached from the back/forward cache must not keep a form marked as submitted.
window.addEventListener("pageshow", () => {
  for (const form of document.querySelectorAll("form[data-once]")) {
    delete form.dataset.submitted;
    for (const button of form.querySelectorAll("button")) {
      button.removeAttribute("aria-disabled");
    }
  }
});

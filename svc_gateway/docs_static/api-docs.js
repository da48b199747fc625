// Starts Swagger UI (swagger-ui-bundle.js, from swagger-ui-py) on the shop's API document.
// A file rather than an inline script, so that the docs page's CSP allows scripts from this
// origin only (svc_gateway/docs.py).
"use strict";

window.addEventListener("DOMContentLoaded", () => {
  const root = document.getElementById("api-docs");
  window.ui = SwaggerUIBundle({
    url: root.dataset.document,
    domNode: root,
    // No top bar (its box would fetch any URL typed in) and no plugins from elsewhere.
    presets: [SwaggerUIBundle.presets.apis],
    layout: "BaseLayout",
    // Swagger UI would otherwise send the document to validator.swagger.io for a badge.
    validatorUrl: null,
    deepLinking: true,
    displayRequestDuration: true,
    docExpansion: "list",
    defaultModelsExpandDepth: 0,
    // A token given to Authorize stays in this tab only, never in localStorage.
    persistAuthorization: false,
  });
});

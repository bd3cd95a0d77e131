// Starts Swagger UI on this service's own description. Loaded as a file (the page's CSP allows no
// inline script); no third party is contacted: the validator badge (validator.swagger.io) is off.
window.addEventListener("load", function () {
  window.ui = SwaggerUIBundle({
    url: "openapi.json", // relative to /docs, so it follows a path prefix added by a proxy
    dom_id: "#swagger-ui",
    deepLinking: true,
    validatorUrl: null,
    presets: [SwaggerUIBundle.presets.apis],
    layout: "BaseLayout",
    defaultModelsExpandDepth: 0,
  });
});

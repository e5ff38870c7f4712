// The console's entry point: the token form, the navigation between views.
import { $, describe } from "./dom.js";
import { call, forgetToken, setToken, token } from "./rpc.js";
import { auditView, eventsView, graphView, memoryView, routerView, sleepView } from "./views.js";

const views = { memory: memoryView(), graph: graphView(), audit: auditView(), sleep: sleepView(), router: routerView(), events: eventsView() };

function show(name) {
  const loggedIn = token() !== null;
  $("#login").hidden = loggedIn;
  $("#nav").hidden = !loggedIn;
  $("#logout").hidden = !loggedIn;
  for (const view of Object.keys(views)) $(`#${view}`).hidden = !loggedIn || view !== name;
  for (const link of document.querySelectorAll("nav a")) link.classList.toggle("active", link.hash === `#${name}`);
  if (loggedIn) views[name]();
}

function current() {
  const name = location.hash.slice(1);
  return name in views ? name : "memory";
}

$("#login-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  setToken($("#token").value.trim());
  $("#token").value = "";
  try {
    await call("system.ping");
    $("#login-error").textContent = "";
    document.body.dataset.ready = "true";
    show(current());
  } catch (error) {
    forgetToken();
    $("#login-error").textContent = describe(error);
  }
});

$("#logout").addEventListener("click", () => { forgetToken(); show(current()); });
window.addEventListener("hashchange", () => show(current()));
if (token() !== null) document.body.dataset.ready = "true";
show(current());
// The forms work from here on (before, a submit would be the browser's own, which the CSP's
// form-action 'none' blocks): what a script driving the page waits for.
document.documentElement.dataset.console = "loaded";

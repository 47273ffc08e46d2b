// The hosted invoice page's behaviour: Stripe.js for a new card and 3-D Secure, and
// following a payment until it settles. Everything else works without it.
(function () {
  "use strict";
  var section = document.getElementById("payment");
  if (!section) return;
  var data = section.dataset;
  var csrf = document.querySelector('meta[name="csrf-token"]').content;
  var message = section.querySelector('[data-testid="payment-message"]');
  var buttons = section.querySelectorAll("button");

  function say(text) { message.textContent = text; }
  function busy(on) { buttons.forEach(function (b) { b.disabled = on; }); }

  function post(url, body) {
    return fetch(url, {
      method: "POST",
      credentials: "same-origin",
      headers: {"Content-Type": "application/json", "Accept": "application/json", "X-CSRFToken": csrf},
      body: JSON.stringify(body || {})
    }).then(function (response) {
      return response.json().catch(function () { return {}; }).then(function (answer) {
        if (!response.ok) {
          throw new Error((answer.error && answer.error.message) || "Something went wrong; please try again.");
        }
        return answer;
      });
    });
  }

  // Follows the invoice while it stays as it is (`waiting`: the payment's state, e.g.
  // "processing"), then shows the page as the server renders it in its new state.
  function follow(waiting) {
    var tries = 0;
    function ask() {
      tries += 1;
      fetch(data.statusUrl, {headers: {"Accept": "application/json"}, credentials: "same-origin"})
        .then(function (r) { return r.json(); })
        .then(function (now) {
          if (now.status !== data.status || now.state !== waiting) {
            window.location.reload();
          } else if (tries < 90) {
            window.setTimeout(ask, 2000);
          } else {
            say("Your payment is still being processed. Reload this page in a few minutes.");
          }
        })
        .catch(function () { if (tries < 90) window.setTimeout(ask, 4000); });
    }
    ask();
  }

  function settle(answer) {
    if (answer.message) say(answer.message);
    if (answer.state === "processing") follow("processing");
    else window.location.reload();
  }

  var payForm = document.getElementById("pay-saved-form");
  if (payForm) {
    payForm.addEventListener("submit", function (event) {
      event.preventDefault();
      if (payForm.dataset.sent) return;  // a double click pays once (the server agrees)
      payForm.dataset.sent = "1";
      busy(true);
      say("Your payment is being processed.");
      post(payForm.action).then(settle)
        .catch(function (error) { say(error.message); busy(false); delete payForm.dataset.sent; });
    });
  }

  var stripe = null;
  if (data.publishableKey && typeof window.Stripe === "function") {
    stripe = window.Stripe(data.publishableKey);
  }

  var newCard = document.getElementById("new-card");
  if (newCard && stripe) {
    newCard.hidden = false;
    var card = stripe.elements().create("card");
    card.mount("#card-element");
    var useCard = function (pay) {
      busy(true);
      say("Checking your card…");
      post(data.setupUrl)
        .then(function (setup) {
          return stripe.confirmCardSetup(setup.client_secret, {payment_method: {card: card}});
        })
        .then(function (result) {
          if (result.error) throw new Error(result.error.message || "Your card was not accepted.");
          return post(data.cardUrl, {setup_intent: result.setupIntent.id, pay: pay});
        })
        .then(settle)
        .catch(function (error) { say(error.message); busy(false); });
    };
    document.getElementById("pay-new-card").addEventListener("click", function () { useCard(true); });
    document.getElementById("save-card").addEventListener("click", function () { useCard(false); });
  }

  var authenticate = document.getElementById("authenticate");
  if (authenticate && stripe) {
    authenticate.addEventListener("click", function () {
      busy(true);
      stripe.confirmCardPayment(authenticate.dataset.clientSecret).then(function (result) {
        if (result.error) say(result.error.message || "The payment was not confirmed.");
        else say("Thank you. Your payment is being confirmed.");
        follow("requires_action");
      });
    });
  }

  if (data.state === "processing") follow("processing");
})();

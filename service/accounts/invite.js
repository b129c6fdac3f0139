// The invite / set-password page: the token is in the fragment (never sent to a server); post it with the password.
document.getElementById("accept").addEventListener("submit", async (event) => {
  event.preventDefault();
  const token = new URLSearchParams(location.hash.slice(1)).get("token") || "";
  const result = document.getElementById("result");
  const response = await fetch("/api/v1/invites/accept", {
    method: "POST",
    headers: {"Content-Type": "application/json"},
    body: JSON.stringify({token, password: document.getElementById("password").value}),
  });
  const body = await response.json();
  if (response.ok) {
    history.replaceState(null, "", location.pathname);  // the used token leaves the address bar
    result.textContent = "Done: log in as " + body.email + ".";
  } else {
    result.textContent = (body.errors && body.errors.password) ? body.errors.password.join(" ") : body.detail;
  }
});

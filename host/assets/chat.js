// The chat page: sign in, choose a bot, chat with it over `/ws`.
//
// Tokens live in this closure only, never in web storage or cookies, so
// closing the tab drops them. Text from the server is always set with
// `textContent`, never parsed as HTML.
"use strict";

(() => {
  const byId = (id) => document.getElementById(id);

  const auth = { access: null, refresh: null };
  const chat = {
    bot: null,
    sessionId: null,
    socket: null,
    suggestions: [],
  };

  // Descriptions of the standard close codes (RFC 6455, section 7.4.1) that
  // a chat connection may end with.
  const CLOSE_REASONS = {
    1000: "the conversation ended",
    1001: "the server is going away",
    1006: "the server refused the connection or it was lost",
    1008: "the server closed it for a policy violation, such as an ended session",
    1009: "the message was too large",
    1011: "the server hit an internal error",
  };

  function showView(name) {
    for (const view of ["login-view", "bots-view", "chat-view"]) {
      byId(view).hidden = view !== name;
    }
  }

  function notify(text) {
    const notice = byId("notice");
    notice.textContent = text;
    notice.hidden = !text;
  }

  function setStatus(text) {
    byId("status").textContent = text;
  }

  // Returns the `detail` of an RFC 9457 problem response, or its status line.
  async function problemText(response) {
    try {
      const problem = await response.json();
      return problem.detail || problem.title || `${response.status} ${response.statusText}`;
    } catch {
      return `${response.status} ${response.statusText}`;
    }
  }

  function request(method, path, body) {
    const headers = {};
    if (auth.access) {
      headers.Authorization = `Bearer ${auth.access}`;
    }
    const init = { method, headers, credentials: "omit", cache: "no-store" };
    if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    return fetch(path, init);
  }

  function keepTokens(tokens) {
    auth.access = tokens.access_token;
    auth.refresh = tokens.refresh_token;
  }

  function dropTokens() {
    auth.access = null;
    auth.refresh = null;
  }

  // Access tokens are short-lived: on a 401, rotate the refresh token once
  // and repeat the request.
  async function api(method, path, body) {
    let response = await request(method, path, body);
    if (response.status === 401 && auth.refresh) {
      const refresh_token = auth.refresh;
      auth.access = null;
      const refreshed = await request("POST", "/api/v1/auth/refresh", { refresh_token });
      if (refreshed.ok) {
        keepTokens(await refreshed.json());
        response = await request(method, path, body);
      } else {
        dropTokens();
      }
    }
    return response;
  }

  function sessionEnded() {
    closeSocket();
    dropTokens();
    showView("login-view");
    notify("Your session ended. Sign in again.");
    byId("tenant").focus();
  }

  async function signIn(event) {
    event.preventDefault();
    const form = event.currentTarget;
    const button = form.querySelector("button");
    const credentials = {
      tenant: form.elements.tenant.value.trim(),
      username: form.elements.username.value.trim(),
      password: form.elements.password.value,
    };
    form.elements.password.value = "";
    button.disabled = true;
    notify("");
    try {
      const response = await request("POST", "/api/v1/auth/login", credentials);
      if (!response.ok) {
        notify(`Sign-in failed: ${await problemText(response)}`);
        form.elements.password.focus();
        return;
      }
      keepTokens(await response.json());
      await showBots();
    } catch (error) {
      notify(`Sign-in failed: ${error.message}`);
    } finally {
      button.disabled = false;
    }
  }

  async function signOut() {
    closeSocket();
    if (auth.access) {
      try {
        await request("POST", "/api/v1/auth/logout");
      } catch {
        // The tokens are dropped below either way.
      }
    }
    dropTokens();
    notify("");
    showView("login-view");
    byId("tenant").focus();
  }

  async function showBots() {
    let bots;
    try {
      const response = await api("GET", "/api/v1/me/bots");
      if (response.status === 401) {
        sessionEnded();
        return;
      }
      if (!response.ok) {
        notify(`Could not list the bots: ${await problemText(response)}`);
        return;
      }
      ({ bots } = await response.json());
    } catch (error) {
      notify(`Could not list the bots: ${error.message}`);
      return;
    }
    const list = byId("bot-list");
    list.replaceChildren();
    for (const bot of bots) {
      // The server may list only enabled bots and leave `enabled` out.
      const enabled = bot.enabled !== false;
      const button = document.createElement("button");
      button.type = "button";
      button.textContent = enabled ? bot.name : `${bot.name} (disabled)`;
      button.disabled = !enabled;
      button.addEventListener("click", () => openChat(bot.name));
      const item = document.createElement("li");
      item.append(button);
      list.append(item);
    }
    byId("no-bots").hidden = bots.length > 0;
    showView("bots-view");
    const first = list.querySelector("button:not([disabled])");
    (first || byId("sign-out")).focus();
  }

  function openChat(bot) {
    chat.bot = bot;
    chat.sessionId = null;
    byId("chat-heading").textContent = `Chat with ${bot}`;
    byId("transcript").replaceChildren();
    clearSuggestions();
    notify("");
    showView("chat-view");
    connect();
  }

  function enableSending(enabled) {
    byId("message").disabled = !enabled;
    byId("send-form").querySelector("button").disabled = !enabled;
  }

  async function connect() {
    enableSending(false);
    byId("closed-actions").hidden = true;
    setStatus("Connecting…");
    let ticket;
    try {
      const response = await api("POST", "/api/v1/auth/ws-ticket");
      if (response.status === 401) {
        sessionEnded();
        return;
      }
      if (!response.ok) {
        connectionLost(`Could not get a connection ticket: ${await problemText(response)}`);
        return;
      }
      ({ ticket } = await response.json());
    } catch (error) {
      connectionLost(`Could not get a connection ticket: ${error.message}`);
      return;
    }

    const url = new URL("/ws", window.location.href);
    url.protocol = window.location.protocol === "https:" ? "wss:" : "ws:";
    url.searchParams.set("ticket", ticket);
    url.searchParams.set("bot", chat.bot);
    if (chat.sessionId) {
      url.searchParams.set("session_id", chat.sessionId);
    }
    const socket = new WebSocket(url);
    chat.socket = socket;
    socket.addEventListener("message", (event) => {
      if (socket === chat.socket) {
        handleFrame(event.data);
      }
    });
    socket.addEventListener("close", (event) => {
      if (socket === chat.socket) {
        chat.socket = null;
        connectionLost(describeClose(event));
      }
    });
  }

  function closeSocket() {
    const socket = chat.socket;
    chat.socket = null;
    if (socket) {
      socket.close(1000);
    }
  }

  function describeClose(event) {
    const meaning = CLOSE_REASONS[event.code] || "the connection closed";
    const reason = event.reason ? ` (“${event.reason}”)` : "";
    return `Disconnected, code ${event.code}: ${meaning}${reason}.`;
  }

  function connectionLost(text) {
    enableSending(false);
    byId("closed-actions").hidden = false;
    setStatus(text);
    byId("reconnect").focus();
  }

  function handleFrame(data) {
    let frame;
    try {
      frame = JSON.parse(data);
    } catch {
      return;
    }
    if (frame.type === "connected") {
      chat.sessionId = frame.session_id;
      setStatus(`Connected to ${chat.bot}.`);
      enableSending(true);
      byId("message").focus();
    } else if (frame.type === "error") {
      notify(frame.message || "The server reported an error.");
    } else if (typeof frame.content === "string") {
      if (frame.content) {
        addLine("bot", frame.content);
      }
      addSuggestions(Array.isArray(frame.suggestions) ? frame.suggestions : []);
    }
  }

  function addLine(speaker, text) {
    const label = document.createElement("span");
    label.className = "speaker";
    label.textContent = speaker === "bot" ? `${chat.bot}:` : "You:";
    const body = document.createElement("span");
    body.className = "text";
    body.textContent = text;
    const item = document.createElement("li");
    item.className = `from-${speaker}`;
    item.append(label, " ", body);
    byId("transcript").append(item);
    item.scrollIntoView({ block: "end" });
  }

  function clearSuggestions() {
    chat.suggestions = [];
    byId("suggestions").replaceChildren();
  }

  function addSuggestions(suggestions) {
    for (const suggestion of suggestions) {
      if (typeof suggestion.text !== "string" || !suggestion.text) {
        continue;
      }
      const button = document.createElement("button");
      button.type = "button";
      button.textContent = suggestion.text;
      button.addEventListener("click", () => pickSuggestion(suggestion));
      byId("suggestions").append(button);
    }
  }

  // Returns whether the frame was sent.
  function send(frame) {
    if (!chat.socket || chat.socket.readyState !== WebSocket.OPEN) {
      return false;
    }
    chat.socket.send(JSON.stringify(frame));
    clearSuggestions();
    notify("");
    return true;
  }

  function pickSuggestion(suggestion) {
    const frame = { content: suggestion.text, message_type: 4 };
    if (typeof suggestion.context === "string") {
      frame.context = suggestion.context;
    }
    if (send(frame)) {
      addLine("user", suggestion.text);
      byId("message").focus();
    }
  }

  function sendMessage(event) {
    event.preventDefault();
    const input = byId("message");
    const text = input.value;
    if (!text.trim()) {
      return;
    }
    if (send({ content: text, message_type: 1 })) {
      addLine("user", text);
      input.value = "";
    }
  }

  function leaveChat() {
    closeSocket();
    showBots();
  }

  document.addEventListener("DOMContentLoaded", () => {
    byId("login-form").addEventListener("submit", signIn);
    byId("send-form").addEventListener("submit", sendMessage);
    byId("sign-out").addEventListener("click", signOut);
    byId("reconnect").addEventListener("click", connect);
    byId("leave").addEventListener("click", leaveChat);
    showView("login-view");
  });
})();

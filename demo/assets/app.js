// The Vantage demo's Movie-Guru-like single-page app, in plain JavaScript with no build
// step. It reproduces the DOM and the backend calls of the real Vue app (see
// shared/MOVIE-GURU.md), so a WebDriver journey written for one works on the other:
//
//   /login  one input[type="text"] and a "Sign in" button; a failed login clears the
//           input and changes its placeholder, nothing else.
//   /       "THE MOVIE GURU", #chat-container with one div.flex-col per message (the
//           bubble inside is div.self-end for the user, div.self-start for the agent),
//           #thinkingDots and #error_message as direct children while they apply, the
//           "Type your message" input (Enter sends), "Featured films", the e-mail in an
//           h1 and a "Sign out" button.
//
// The backend URL comes from window.MOVIE_GURU_BACKEND, written into the page by the
// server; nothing here can change it. Every call sends Content-Type: application/json and
// a `user` header with credentials, so each cross-origin call is preflighted exactly like
// the real app's. There are no timeouts or retries: a hanging or failing backend must
// look to a probe just as it looks to a user.
(function () {
  'use strict';

  const BACKEND = String(window.MOVIE_GURU_BACKEND || '');
  const REPLICA = String(window.MOVIE_GURU_REPLICA || '');
  // The key vuex-persistedstate uses in the real app, with the same user shape.
  const STORE_KEY = 'vuex';

  const TEXT = {
    loginPlaceholder: 'Enter your email here and click on sign in...',
    loginFailedPlaceholder: 'Something went wrong... Enter your email and try again.',
    chatPlaceholder: 'Type your message and press ENTER to send...',
    chatError: 'Oops! Something went wrong. Try again.',
    unsafe: 'That was a naughty query. I cannot answer that question.',
    historyTrimmed: 'Older messages are deleted from the system.',
  };

  const view = document.getElementById('view');
  // Bumped on every route change, so answers for a view that is gone are dropped.
  let generation = 0;

  // ---- storage ------------------------------------------------------------------------

  function storedEmail() {
    try {
      const state = JSON.parse(window.localStorage.getItem(STORE_KEY) || 'null');
      const user = state && state.user;
      if (user && user.loginStatus === true && typeof user.email === 'string' && user.email) {
        return user.email;
      }
    } catch (error) {
      console.warn('ignoring unreadable login state', error);
    }
    return null;
  }

  function storeLogin(email) {
    window.localStorage.setItem(STORE_KEY, JSON.stringify({
      user: { email: email, loginStatus: true },
    }));
  }

  function forgetLogin() {
    window.localStorage.removeItem(STORE_KEY);
  }

  // ---- backend ------------------------------------------------------------------------

  // One backend call. Throws on a network or CORS failure (fetch rejects) and on any
  // non-2xx status; returns the parsed JSON body, or null for a DELETE.
  async function call(method, path, user, body) {
    const init = {
      method: method,
      headers: { 'Content-Type': 'application/json', user: user },
      credentials: 'include',
    };
    if (body !== undefined) {
      init.body = JSON.stringify(body);
    }
    const response = await fetch(BACKEND + path, init);
    if (!response.ok) {
      throw new Error(method + ' ' + path + ': response status ' + response.status);
    }
    if (method === 'DELETE') {
      return null;
    }
    return response.json();
  }

  // ---- DOM helpers --------------------------------------------------------------------

  // el('div', {class: 'x', id: 'y'}, child, 'text', ...) — text is always set as text,
  // never parsed as HTML, because answers and history come from the network.
  function el(tag, attributes) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attributes || {})) {
      node.setAttribute(name, value);
    }
    for (let i = 2; i < arguments.length; i++) {
      const child = arguments[i];
      if (child === null || child === undefined) {
        continue;
      }
      node.append(child instanceof Node ? child : String(child));
    }
    return node;
  }

  // ---- routing ------------------------------------------------------------------------

  function navigate(path, replace) {
    if (replace) {
      window.history.replaceState(null, '', path);
    } else {
      window.history.pushState(null, '', path);
    }
    route();
  }

  function route() {
    generation += 1;
    const path = window.location.pathname;
    if (path === '/login') {
      renderLogin();
    } else if (path === '/') {
      const email = storedEmail();
      if (email) {
        renderHome(email);
      } else {
        navigate('/login', true);
      }
    } else {
      navigate('/', true);
    }
  }

  // ---- login --------------------------------------------------------------------------

  function renderLogin() {
    const input = el('input', {
      type: 'text',
      class: 'login-input',
      placeholder: TEXT.loginPlaceholder,
      autocomplete: 'email',
    });
    const button = el('button', { type: 'button', class: 'button button-primary' }, 'Sign in');
    let pending = false;
    // Only the button signs in, as in the real app: Enter in the input does nothing.
    button.addEventListener('click', async function () {
      if (pending) {
        return;
      }
      pending = true;
      const mine = generation;
      const email = input.value.trim();
      try {
        await call('POST', '/login', email);
        if (mine !== generation) {
          return;
        }
        storeLogin(email);
        navigate('/');
      } catch (error) {
        console.error('login failed:', error.message);
        if (mine !== generation) {
          return;
        }
        input.value = '';
        input.placeholder = TEXT.loginFailedPlaceholder;
        input.classList.add('login-failed');
      } finally {
        pending = false;
      }
    });
    view.replaceChildren(el('div', { class: 'login-page' },
      el('div', { class: 'login-card flex flex-col' },
        el('p', { class: 'login-intro' }, 'Your personal movie expert. Sign in to chat.'),
        input,
        button)));
  }

  // ---- home ---------------------------------------------------------------------------

  function renderHome(email) {
    const mine = generation;
    const live = function () { return mine === generation; };
    const state = {
      messages: [], // {sender: 'user' | 'agent' | 'system', text}
      processing: false,
      errorOccurred: false,
      requested: [],
    };

    const chatContainer = el('div', { id: 'chat-container' });
    const chatInput = el('input', {
      type: 'text',
      class: 'chat-input',
      placeholder: TEXT.chatPlaceholder,
    });
    const clearButton = el('button', { type: 'button', class: 'button' }, 'Clear Chat');
    const requestedPanel = el('section', { class: 'requested-movies', hidden: '' },
      el('h2', { class: 'section-title' }, 'Recommended for you'));
    const requestedList = el('div', { class: 'movie-list movie-list-column' });
    requestedPanel.append(requestedList);
    const featuredList = el('div', { class: 'movie-list' });
    const preferencesList = el('div', { class: 'preferences' });
    const signOutButton = el('button', { type: 'button', class: 'button' }, 'Sign out');

    // The initials are CSS content, so a bubble's text is only its message, as in the
    // real app whose avatar is an image.
    function avatar() {
      return el('span', { class: 'avatar', 'aria-hidden': 'true' });
    }

    function renderChat() {
      const nodes = state.messages.map(function (message) {
        let bubble;
        if (message.sender === 'user') {
          bubble = el('div', { class: 'bubble bubble-user self-end' },
            el('div', { class: 'message' }, message.text));
        } else if (message.sender === 'agent') {
          bubble = el('div', { class: 'bubble bubble-agent self-start' },
            avatar(),
            el('div', { class: 'message' }, message.text));
        } else {
          bubble = el('div', { class: 'bubble bubble-system' },
            el('div', { class: 'message' }, message.text));
        }
        return el('div', { class: 'flex flex-col justify-center' }, bubble);
      });
      // Outside any div.flex-col, like the real app, so these never match the selectors
      // for the user's and the agent's messages.
      if (state.processing) {
        nodes.push(el('div', { class: 'bubble bubble-agent self-start' },
          avatar(),
          el('div', { id: 'thinkingDots', class: 'typing-animation' })));
      }
      if (state.errorOccurred) {
        nodes.push(el('div', { class: 'bubble bubble-agent bubble-error self-start' },
          avatar(),
          el('div', { id: 'error_message', class: 'message' }, TEXT.chatError)));
      }
      chatContainer.replaceChildren(...nodes);
      chatContainer.scrollTop = chatContainer.scrollHeight;
    }

    function movieCard(movie) {
      const title = String(movie.title || '');
      const poster = movie.poster
        ? el('img', { class: 'poster', src: String(movie.poster), alt: title })
        : el('div', { class: 'poster poster-empty', 'aria-hidden': 'true' }, title.slice(0, 1));
      const meta = [movie.released, movie.runtime_minutes ? movie.runtime_minutes + ' min' : null,
        typeof movie.rating === 'number' ? '\u2605 ' + movie.rating.toFixed(1) : null]
        .filter(function (part) { return part !== null && part !== undefined && part !== ''; })
        .join(' \u00b7 ');
      return el('article', { class: 'movie-card' },
        poster,
        el('div', { class: 'movie-body' },
          el('h3', { class: 'movie-title' }, title),
          el('p', { class: 'movie-meta' }, meta),
          el('p', { class: 'movie-genres' }, (movie.genres || []).join(', ')),
          movie.plot ? el('p', { class: 'movie-plot' }, movie.plot) : null));
    }

    function renderMovies(list, movies) {
      list.replaceChildren(...(Array.isArray(movies) ? movies : []).map(movieCard));
    }

    function renderPreferences(preferences) {
      const chips = [];
      for (const kind of ['likes', 'dislikes']) {
        const lists = (preferences && preferences[kind]) || {};
        for (const key of ['genres', 'actors', 'director', 'other']) {
          for (const value of lists[key] || []) {
            chips.push(el('span', { class: 'chip chip-' + kind }, value));
          }
        }
      }
      preferencesList.replaceChildren(...chips);
    }

    async function loadHistory() {
      try {
        const history = await call('GET', '/history', email);
        if (!live()) {
          return;
        }
        const messages = [];
        if (history.length >= 9) {
          messages.push({ sender: 'system', text: TEXT.historyTrimmed });
        }
        for (const entry of history) {
          messages.push({ sender: entry.role, text: String(entry.content || '') });
        }
        // Messages sent while the history was loading stay after it.
        state.messages = messages.concat(state.messages);
        renderChat();
      } catch (error) {
        console.error('loading the chat history failed:', error.message);
      }
    }

    async function loadStartup() {
      try {
        const json = await call('GET', '/startup', email);
        if (!live() || json.result !== 'SUCCESS') {
          return;
        }
        renderMovies(featuredList, json.context);
        if (json.preferences) {
          renderPreferences(json.preferences);
        }
      } catch (error) {
        console.error('loading featured films failed:', error.message);
      }
    }

    async function send(text) {
      state.errorOccurred = false;
      state.processing = true;
      state.messages.push({ sender: 'user', text: text });
      chatInput.value = '';
      renderChat();
      try {
        const json = await call('POST', '/chat', email, { content: text });
        if (!live()) {
          return;
        }
        if (json.result === 'SUCCESS') {
          state.messages.push({ sender: 'agent', text: String(json.answer || '') });
          const movies = Array.isArray(json.context) ? json.context : [];
          state.requested = movies;
          renderMovies(requestedList, movies);
          requestedPanel.hidden = movies.length === 0;
          if (movies.length > 0) {
            loadStartup();
          }
        } else if (json.result === 'UNSAFE') {
          state.messages.push({ sender: 'agent', text: TEXT.unsafe });
        } else {
          state.errorOccurred = true;
        }
        if (json.preferences) {
          renderPreferences(json.preferences);
        }
      } catch (error) {
        console.error('chat failed:', error.message);
        if (!live()) {
          return;
        }
        state.errorOccurred = true;
      }
      state.processing = false;
      renderChat();
    }

    chatInput.addEventListener('keyup', function (event) {
      if (event.key !== 'Enter' || state.processing) {
        return;
      }
      const text = chatInput.value.trim();
      if (text) {
        send(text);
      }
    });

    clearButton.addEventListener('click', async function () {
      state.errorOccurred = false;
      try {
        await call('DELETE', '/history', email);
        if (!live()) {
          return;
        }
        state.messages = [];
      } catch (error) {
        console.error('clearing the chat failed:', error.message);
      }
      renderChat();
    });

    // The real app leaves a user logged in when the logout call fails; this demo signs
    // out locally anyway, so a broken replica never traps a human in a dead session.
    signOutButton.addEventListener('click', async function () {
      try {
        await call('GET', '/logout', email);
      } catch (error) {
        console.error('logout failed:', error.message);
      }
      forgetLogin();
      navigate('/login');
    });

    view.replaceChildren(el('div', { class: 'home' },
      el('div', { class: 'home-main' },
        requestedPanel,
        el('section', { class: 'chat-window flex flex-col' },
          el('div', { class: 'chat-toolbar' }, clearButton),
          chatContainer,
          el('div', { class: 'chat-input-row' }, chatInput))),
      el('section', { class: 'featured' },
        el('h1', { class: 'section-title' }, 'Featured films'),
        featuredList),
      el('section', { class: 'user-panel flex flex-col' },
        el('h1', { class: 'user-email' }, email),
        el('h2', { class: 'user-note' }, 'The Movie Guru tries to learn your movie preferences.'),
        el('h2', { class: 'user-note' }, 'You can instruct it to take your likes and dislikes into account.'),
        preferencesList,
        signOutButton)));
    renderChat();
    // Both start at once, as the real app's chat window and featured-films components do.
    loadHistory();
    loadStartup();
  }

  // ---- start --------------------------------------------------------------------------

  const replicaName = document.getElementById('replica-name');
  if (replicaName) {
    replicaName.textContent = REPLICA;
  }
  window.addEventListener('popstate', route);
  route();
})();

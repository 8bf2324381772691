() => {
  // SD Studio's page script (passed to launch(js=...)): A1111's keyboard bindings, the
  // run's percent in the browser tab's title, and the browser side of remembered settings.
  const KEY = "sd-studio:remembered";  // ui/remember.py STORAGE_KEY
  const TABS = ["txt2img", "img2img", "inpaint", "controlnet"];
  const TITLE = document.title.replace(/^\[\d+%\] /, "") || "SD Studio";
  let running = false;

  window.sdStudio = {
    remember(tab, name, value) {
      try {
        const all = JSON.parse(localStorage.getItem(KEY) || "{}");
        (all[tab] = all[tab] || {})[name] = value;
        localStorage.setItem(KEY, JSON.stringify(all));
      } catch (e) { /* storage full or off: nothing is remembered */ }
    },
  };

  // The button of the generation tab on screen (hidden tabs' buttons have no layout box).
  const button = (kind) => TABS.map((tab) => document.getElementById(`${tab}_${kind}`))
    .find((b) => b && b.offsetParent !== null);

  document.addEventListener("keydown", (event) => {
    const press = (kind) => {
      const target = button(kind);
      if (!target) return;
      event.preventDefault();
      event.stopPropagation();
      target.click();
    };
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) press("generate");
    else if (event.key === "Enter" && event.altKey && running) press("skip");
    else if (event.key === "Escape" && running) press("interrupt");
  }, true);

  // The progress line reads "43% · Batch 1/2, step 9/20 · ETA 12 s" (ui/progress.py).
  setInterval(() => {
    let percent = null;
    for (const node of document.querySelectorAll(".progress-level-inner, .progress-text, .meta-text")) {
      const match = /(\d{1,3})% ·/.exec(node.textContent || "");
      if (match) { percent = match[1]; break; }
    }
    running = percent !== null || TABS.some((tab) => document.querySelector(`#${tab}_gallery .wrap.generating, #${tab}_preview .wrap.generating`));
    const title = percent !== null ? `[${percent}%] ${TITLE}` : TITLE;
    if (document.title !== title) document.title = title;
  }, 300);
}

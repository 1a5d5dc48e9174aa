// The sidebar buttons. sphinx-book-theme 1.3 on pydata-sphinx-theme 0.17 binds its sidebar code to
// the first ".primary-toggle" (and ".secondary-toggle") on the page: the buttons of pydata's top
// bar, which this book hides (neuroforge.css). The buttons a reader sees, in the article's header,
// would only show a tooltip; here they forward their clicks to the bound ones, which open the
// chapter list (a drawer on a narrow screen) or hide and show the sidebar (on a wide one).
document.addEventListener("DOMContentLoaded", () => {
  for (const side of ["primary", "secondary"]) {
    const bound = document.querySelector(`#pst-header .${side}-toggle`);
    if (!bound) continue;
    for (const button of document.querySelectorAll(`.bd-header-article .${side}-toggle`)) {
      button.addEventListener("click", (event) => {
        event.preventDefault();
        event.stopPropagation();
        bound.click();
      });
    }
  }
});
